"""``python -m sweep.train``: see ``sweep.cli.train``."""
import sys

from sweep.cli.train import main

sys.exit(main())
