#!/usr/bin/env python
"""Memory of repeated evaluation passes: live data against the freed memory the heap keeps. The logic is
sctab.bench.heap."""

import sys

from sctab.bench.heap import main

if __name__ == "__main__":
    sys.exit(main())
