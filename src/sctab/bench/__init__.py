"""`make bench`: loader and scTab throughput against in-run baselines (issue 7). See runner.py.

    python -m sctab.bench.runner --quick            # or benchmarks/run.py; rows in REGISTRY (cases/)

Names are imported on first use: the cases import torch and the models.
"""


from sctab.lazy import lazy_namespace

_LAZY = {"Config": "sctab.bench.fixtures", "REGISTRY": "sctab.bench.cases", "register": "sctab.bench.cases",
         "run_case": "sctab.bench.runner", "make_store": "sctab.bench.synthetic"}
__all__ = sorted(_LAZY)
__getattr__, __dir__ = lazy_namespace(__name__, _LAZY)
