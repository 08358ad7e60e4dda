"""The input .h5ad of ``annotate_file``, besides its matrix (which :mod:`sctab.census.counts` reads): the checks
before it is opened, its obs and neighbour graph, old-format files (read whole), and a damaged file's low-level
errors turned into an AnnotateError that names the file.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import pandas as pd

from sctab.annotation.errors import AnnotateError


def check_input(src: Path) -> None:
    if not src.is_file():
        raise AnnotateError(f"input file {src} does not exist")
    if src.suffix != ".h5ad":
        raise AnnotateError(f"input {src} is not an .h5ad file (convert other formats with anndata/scanpy first)")


def open_h5(src: Path):
    """The file opened read-only with h5py."""
    import h5py

    try:
        return h5py.File(src, "r")
    except OSError as e:
        raise AnnotateError(f"cannot open {src} as HDF5 (truncated or not an h5ad file?): {e}") from e


@contextlib.contextmanager
def read_errors(src: Path):
    """Errors of a damaged HDF5 structure, raised while reading ``src``, as an AnnotateError."""
    try:
        yield
    except AnnotateError:
        raise
    except (OSError, RuntimeError, KeyError, ValueError, TypeError) as e:
        raise AnnotateError(f"cannot read {src}: the file is damaged or not a valid h5ad ({e})") from e


def read_legacy(src: Path):
    """Old (pre-0.7) h5ad files: anndata converts them on reading; they are small enough to load."""
    import warnings

    import anndata

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return anndata.read_h5ad(src)
    except Exception as e:
        raise AnnotateError(f"cannot read {src} as an AnnData file: {e}") from e


def file_obs(f, legacy) -> pd.DataFrame:
    import anndata.io as aio

    return legacy.obs if legacy is not None else aio.read_elem(f["obs"])


def file_graph(f, legacy):
    """An existing neighbour graph of the file (obsp['connectivities']), or None."""
    import anndata.io as aio

    if legacy is not None:
        return legacy.obsp["connectivities"] if "connectivities" in legacy.obsp else None
    if "obsp" in f and "connectivities" in f["obsp"]:
        return aio.read_elem(f["obsp"]["connectivities"])
    return None
