"""`make bench-references`: the real-data reference suite (sctab.bench.references)."""

import sys

from sctab.bench.references import main

if __name__ == "__main__":
    sys.exit(main())
