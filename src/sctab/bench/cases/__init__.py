"""The benchmark cases of `make bench`: each measures our fast path ("ours") and its baseline in the same run.

A case is a function `(part, cfg) -> dict` registered in `REGISTRY` under a name; `part` is "ours" or
"baseline" (each runs in its own subprocess, so each gets its own peak memory). It returns
`{"samples": [...], "unit": ..., "label": ..., "check": {...}}`: throughput samples (one per repeat), what
was measured, and, for "ours", the exactness check (`exactness`: the reference TabNet in float32 and in float64) and
what the speed depends on (the masks' support sizes). `Case.run=None` registers a row whose benchmark does
not exist yet (shown as "not run").

The rows by what they measure: ``loaders``, ``model``, ``annotate``, ``device``; what they run on is
``sctab.bench.fixtures``, their criteria ``sctab.bench.exactness``.
"""

# isort: off
# each module registers its rows as it is imported: this order is the table's
from sctab.bench.cases import loaders  # noqa: F401
from sctab.bench.cases import model  # noqa: F401
from sctab.bench.cases import annotate  # noqa: F401
from sctab.bench.cases import device  # noqa: F401
# isort: on
from sctab.bench.cases.registry import REGISTRY, Case, Rates, register

__all__ = ["REGISTRY", "Case", "Rates", "register"]
