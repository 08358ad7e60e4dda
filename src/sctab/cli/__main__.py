"""``python -m sctab.cli``: the `sctab` command."""

import sys

from sctab.cli import main

sys.exit(main())
