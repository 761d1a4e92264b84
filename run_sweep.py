#!/usr/bin/env python
"""Run a search-space file: ``python run_sweep.py search_spaces/smoke.yaml [--set k=v ...]``.

See ``python run_sweep.py --help`` and docs/commands.md; the work is in
``sweep.cli.run``.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from sweep.cli.run import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
