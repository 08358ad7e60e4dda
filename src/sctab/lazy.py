"""Package namespaces whose names are imported on first use (module ``__getattr__``, PEP 562).

Why: ``import sctab.census`` or ``import sctab`` must not pull in tiledbsoma, torch or anndata before a command
needs them (`sctab --help` stays fast). A package lists its public names and the module each lives in; the
module is imported when the name is first read.
"""

from __future__ import annotations

import importlib
import sys
from typing import Callable


def lazy_namespace(package: str, names: dict[str, str]) -> tuple[Callable, Callable]:
    """``(__getattr__, __dir__)`` for ``package``, whose public ``names`` map to their modules (the package's
    ``__all__`` lists them too)."""

    def __getattr__(name: str):
        if name in names:
            return getattr(importlib.import_module(names[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(names))

    return __getattr__, __dir__
