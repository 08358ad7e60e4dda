#!/usr/bin/env python
"""Is the model rows' exactness bound stable from run to run? The logic is sctab.bench.bound."""

import sys

from sctab.bench.crossover import main

if __name__ == "__main__":
    sys.exit(main())
