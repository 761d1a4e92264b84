"""``python -m sweep.evaluate``: see ``sweep.cli.evaluate``."""
import sys

from sweep.cli.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
