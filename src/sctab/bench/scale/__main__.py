"""``python -m sctab.bench.scale``: the same as benchmarks/scale.py."""

import sys

from sctab.bench.scale import main

sys.exit(main())
