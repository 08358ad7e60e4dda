#!/usr/bin/env python
"""`make bench-summary`: one table over several `make bench` runs. The logic is sctab.bench.summary."""

import sys

from sctab.bench.summary import main

if __name__ == "__main__":
    sys.exit(main())
