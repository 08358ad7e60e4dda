#!/usr/bin/env python
"""`make bench`: loader and scTab throughput against in-run baselines. The logic is sctab.bench.runner."""

import sys

from sctab.bench.runner import main

if __name__ == "__main__":
    sys.exit(main())
