#!/usr/bin/env python
"""Where the sparse first layer beats densify + dense GEMM for CSR inference. The logic is sctab.bench.crossover."""

import sys

from sctab.bench.crossover import main

if __name__ == "__main__":
    sys.exit(main())
