"""``python -m rolekit.cli``: the ``rolekit`` command."""

import sys

from rolekit.cli import main

sys.exit(main())
