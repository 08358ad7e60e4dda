#!/usr/bin/env python
"""Load test of a served model (`make serve`): clients x request sizes. The logic is sctab.bench.serving."""

import sys

from sctab.bench.serving import main

if __name__ == "__main__":
    sys.exit(main())
