#!/usr/bin/env python
"""`make bench-scale`: every DAG stage at several census sizes, time and peak memory vs cells, fitted and
extrapolated to the paper's census. The logic is sctab.bench.scale."""

import sys

from sctab.bench.scale import main

if __name__ == "__main__":
    sys.exit(main())
