"""``python -m rolekit``: the ``rolekit`` command."""

import sys

from rolekit.cli import main

if __name__ == "__main__":
    sys.exit(main())
