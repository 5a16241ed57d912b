"""``python -m ic_core``: the headless command line."""

import sys

from ic_core.cli import main

if __name__ == "__main__":
    sys.exit(main())
