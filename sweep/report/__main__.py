"""``python -m sweep.report``: see ``sweep.cli.report``."""
import sys

from sweep.cli.report import main

sys.exit(main())
