"""scTab platform: cross-tissue cell type classification (Fischer et al.) as an MLOps project.

The user-facing calls are here, imported on first use so ``import sctab`` stays light:

    sctab.annotate(adata, model="models:/sctab-ensemble@champion")   # new obs columns, like CellTypist
    sctab.plot_annotation(adata)                                      # embedding by label and uncertainty
"""

__version__ = "0.1.0"

from sctab.lazy import lazy_namespace

_LAZY = {"annotate": "sctab.annotation.api", "annotate_file": "sctab.annotation.api",
         "plot_annotation": "sctab.annotation.plots", "load_annotator": "sctab.annotation.resolve",
         "AnnotateError": "sctab.annotation.errors"}
__all__ = sorted(_LAZY)
__getattr__, __dir__ = lazy_namespace(__name__, _LAZY)
