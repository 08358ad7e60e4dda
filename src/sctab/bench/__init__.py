"""`make bench`: loader and scTab throughput against in-run baselines (issue 7). See runner.py.

    python -m sctab.bench.runner --quick            # or benchmarks/run.py; rows in REGISTRY (cases/)

Names are imported on first use: the cases import torch and the models.
"""

import importlib

_LAZY = {"Config": "sctab.bench.fixtures", "REGISTRY": "sctab.bench.cases", "register": "sctab.bench.cases",
         "run_case": "sctab.bench.runner", "make_store": "sctab.bench.synthetic"}
__all__ = sorted(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'sctab.bench' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_LAZY))
