"""scTab platform: cross-tissue cell type classification (Fischer et al.) as an MLOps project.

The user-facing calls are here, imported on first use so ``import sctab`` stays light:

    sctab.annotate(adata, model="models:/sctab-ensemble@champion")   # new obs columns, like CellTypist
    sctab.plot_annotation(adata)                                      # embedding by label and uncertainty
"""

__version__ = "0.1.0"

_LAZY = {"annotate": "sctab.annotation.api", "annotate_file": "sctab.annotation.api",
         "plot_annotation": "sctab.annotation.plots", "load_annotator": "sctab.annotation.resolve",
         "AnnotateError": "sctab.annotation.errors"}
__all__ = sorted(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'sctab' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_LAZY))
