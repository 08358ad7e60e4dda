"""Annotate an AnnData in memory, or an .h5ad file streamed block by block, with a registered model.

The output is written only when every cell was annotated: an .h5ad output is a copy of the input with
new obs columns (written through h5py into a temporary file that is renamed into place, so X is never
loaded whole); .csv and .parquet outputs hold the new columns indexed by obs_names.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from sctab.annotation.annotator import COLUMNS, UNASSIGNED, Annotator, to_model_space
from sctab.annotation.errors import AnnotateError
from sctab.annotation.resolve import DEFAULT_MODEL, load_annotator
from sctab.census.counts import (
    CountsSource,
    GeneMatch,
    LegacyH5ad,
    adata_matrices,
    check_block,
    choose_matrix,
    h5ad_matrices,
    match_genes,
)

OUTPUT_SUFFIXES = (".h5ad", ".csv", ".parquet")


@dataclass
class AnnotationReport:
    """What happened: which matrix and genes were used, how many cells, how fast."""

    model: str
    model_kind: str
    n_cells: int
    matrix: str
    values: str
    gene_ids: str
    model_genes: int
    genes_found: int
    genes_missing: int
    unassigned_cells: int
    uncertain_cells: int
    seconds: float

    @property
    def cells_per_s(self) -> float:
        return self.n_cells / self.seconds if self.seconds > 0 else float("nan")

    def as_dict(self) -> dict:
        return {**asdict(self), "cells_per_s": round(self.cells_per_s, 1)}

    def summary(self) -> str:
        return (f"{self.n_cells:,} cells annotated with {self.model} ({self.model_kind}) in {self.seconds:.1f} s "
                f"({self.cells_per_s:,.0f} cells/s); counts from {self.matrix} ({self.values}); genes matched by "
                f"{self.gene_ids}: {self.genes_found:,} of the model's {self.model_genes:,} found, "
                f"{self.genes_missing:,} zero-filled; {self.uncertain_cells:,} cells above the uncertainty "
                f"threshold got a coarser label; {self.unassigned_cells:,} cells without counts on the model's "
                f"genes are '{UNASSIGNED}'")


def _as_annotator(model, trust_pickle: bool, uncertainty_threshold) -> Annotator:
    if isinstance(model, Annotator):
        if uncertainty_threshold is not None:
            model.uncertainty_threshold = uncertainty_threshold
        return model
    return load_annotator(model, trust_pickle=trust_pickle, uncertainty_threshold=uncertainty_threshold)


def _predict_stream(ann: Annotator, source: CountsSource, match: GeneMatch, batch_size: int,
                    progress: bool) -> pd.DataFrame:
    from tqdm.auto import tqdm

    if batch_size < 1:
        raise AnnotateError(f"batch_size must be >= 1, got {batch_size}")
    frames = []
    with tqdm(total=source.n_obs, unit="cells", desc="annotating", disable=not progress, leave=False) as bar:
        for a in range(0, source.n_obs, batch_size):
            b = min(a + batch_size, source.n_obs)
            try:
                block = source.matrix.read(a, b)
            except AnnotateError:
                raise
            except Exception as e:  # truncated chunks, unreadable compression, wrong dtypes
                raise AnnotateError(f"cannot read rows {a}-{b - 1} of {source.matrix.where}: {e}") from e
            if block.dtype.kind not in "biuf":
                raise AnnotateError(f"{source.matrix.where} holds {block.dtype} values, not numbers")
            block = block.astype(np.float64, copy=False)
            check_block(block, source.values, (a, b), source.matrix.where)
            if source.values == "log1p":
                block = block.copy()
                np.expm1(block.data, out=block.data)
            frames.append(ann.predict_counts(to_model_space(block, match.columns)))
            bar.update(b - a)
    out = pd.concat(frames, ignore_index=True)
    out.index = pd.Index(source.obs_names.astype(str), name=None)
    return out


def _report(ann: Annotator, source: CountsSource, match: GeneMatch, out: pd.DataFrame,
            seconds: float) -> AnnotationReport:
    return AnnotationReport(
        model=ann.description.get("model", str(ann.bundle.path)), model_kind=ann.bundle.kind, n_cells=len(out),
        matrix=source.matrix.where, values=source.values, gene_ids=match.id_type, model_genes=len(ann.genes),
        genes_found=match.n_found, genes_missing=match.n_missing,
        unassigned_cells=int((out["label"] == UNASSIGNED).sum()),
        uncertain_cells=int((out["label"] != out["coarse_label"]).sum()), seconds=seconds)


def _prefixed(frame: pd.DataFrame, key_added: str) -> pd.DataFrame:
    return frame.rename(columns={c: f"{key_added}_{c}" for c in COLUMNS})


def annotate(adata, model=DEFAULT_MODEL, *, layer: str | None = None, gene_column: str | None = None,
             from_log1p: bool = False, allow_non_integer: bool = False, batch_size: int = 4096,
             uncertainty_threshold: float | None = None, key_added: str = "sctab", copy: bool = False,
             trust_pickle: bool = False, progress: bool = True):
    """Annotate ``adata`` with a scTab model, as scanpy/CellTypist users expect.

    Adds ``obs[f"{key_added}_label"]``, ``_cell_type_ontology_term_id``, ``_probability``,
    ``_uncertainty``, ``_coarse_label`` and ``_coarse_ontology_term_id``, and
    ``uns[f"{key_added}_annotation"]`` (what was used). Returns the annotated AnnData (a copy when
    ``copy=True``). ``model`` is a models:/ URI, a model folder or a loaded :class:`Annotator`.
    """
    import anndata

    if not isinstance(adata, anndata.AnnData):
        raise AnnotateError(f"annotate expects an AnnData, got {type(adata).__name__}; for a file use "
                            f"annotate_file or `sctab annotate`")
    ann = _as_annotator(model, trust_pickle, uncertainty_threshold)
    t0 = time.perf_counter()
    obs_names, matrices = adata_matrices(adata)
    source = choose_matrix(obs_names, matrices, layer=layer, from_log1p=from_log1p,
                           allow_non_integer=allow_non_integer, source="the AnnData")
    match = match_genes(source.matrix.var, ann.genes, gene_column=gene_column, where="the AnnData")
    out = _predict_stream(ann, source, match, batch_size, progress)
    report = _report(ann, source, match, out, time.perf_counter() - t0)
    target = adata.copy() if copy else adata
    for c, v in _prefixed(out, key_added).items():
        target.obs[c] = v.to_numpy()
    target.uns[f"{key_added}_annotation"] = {k: v for k, v in report.as_dict().items()}
    return target


@contextlib.contextmanager
def _output_tmp(out: Path):
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.tmp-", dir=out.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _write_h5ad(src: Path, out: Path, frame: pd.DataFrame, report: AnnotationReport, key_added: str) -> None:
    import anndata.io as aio
    import h5py

    with _output_tmp(out) as tmp:
        shutil.copyfile(src, tmp)
        with h5py.File(tmp, "r+") as f:
            obs = aio.read_elem(f["obs"])
            for c, v in _prefixed(frame, key_added).items():
                obs[c] = v.to_numpy()
            del f["obs"]
            aio.write_elem(f, "obs", obs)
            uns = f.require_group("uns") if "uns" in f else None
            if uns is None:
                aio.write_elem(f, "uns", {})
                uns = f["uns"]
            name = f"{key_added}_annotation"
            if name in uns:
                del uns[name]
            aio.write_elem(uns, name, {k: v for k, v in report.as_dict().items()})
        _check_readable(tmp)


def _check_readable(path: Path) -> None:
    """The copy must open as an AnnData (everything but X, which was streamed whole already): a damaged
    group elsewhere in the input would otherwise pass through into an output nobody can read."""
    import warnings

    import anndata

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        adata = anndata.read_h5ad(path, backed="r")
    try:
        adata.X  # opens the element; a damaged group raises here
    finally:
        adata.file.close()


def _read_legacy(src: Path):
    """Old (pre-0.7) h5ad files: anndata converts them on reading; they are small enough to load."""
    import warnings

    import anndata

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return anndata.read_h5ad(src)
    except Exception as e:
        raise AnnotateError(f"cannot read {src} as an AnnData file: {e}") from e


def annotate_file(input: str | Path, output: str | Path, model=DEFAULT_MODEL, *, layer: str | None = None,
                  gene_column: str | None = None, from_log1p: bool = False, allow_non_integer: bool = False,
                  batch_size: int = 4096, uncertainty_threshold: float | None = None, key_added: str = "sctab",
                  trust_pickle: bool = False, progress: bool = True) -> AnnotationReport:
    """Annotate an .h5ad file without loading its matrix; write .h5ad, .csv or .parquet to ``output``."""
    import h5py

    src, out = Path(input), Path(output)
    if out.suffix not in OUTPUT_SUFFIXES:
        raise AnnotateError(f"output {out} must end in one of {', '.join(OUTPUT_SUFFIXES)}")
    if not src.is_file():
        raise AnnotateError(f"input file {src} does not exist")
    if src.suffix != ".h5ad":
        raise AnnotateError(f"input {src} is not an .h5ad file (convert other formats with anndata/scanpy first)")
    ann = _as_annotator(model, trust_pickle, uncertainty_threshold)
    t0 = time.perf_counter()
    try:
        f = h5py.File(src, "r")
    except OSError as e:
        raise AnnotateError(f"cannot open {src} as HDF5 (truncated or not an h5ad file?): {e}") from e
    legacy = None
    with f:
        try:
            try:
                obs_names, matrices = h5ad_matrices(f, src)
            except LegacyH5ad:
                legacy = _read_legacy(src)
                obs_names, matrices = adata_matrices(legacy)
            source = choose_matrix(obs_names, matrices, layer=layer, from_log1p=from_log1p,
                                   allow_non_integer=allow_non_integer, source=str(src))
            match = match_genes(source.matrix.var, ann.genes, gene_column=gene_column, where=str(src))
            frame = _predict_stream(ann, source, match, batch_size, progress)
        except AnnotateError:
            raise
        except (OSError, RuntimeError, KeyError, ValueError, TypeError) as e:  # damaged HDF5 structure
            raise AnnotateError(f"cannot read {src}: the file is damaged or not a valid h5ad ({e})") from e
    report = _report(ann, source, match, frame, time.perf_counter() - t0)
    if out.suffix == ".h5ad" and legacy is not None:
        for c, v in _prefixed(frame, key_added).items():
            legacy.obs[c] = v.to_numpy()
        legacy.uns[f"{key_added}_annotation"] = report.as_dict()
        with _output_tmp(out) as tmp:
            legacy.write_h5ad(tmp)
    elif out.suffix == ".h5ad":
        try:
            _write_h5ad(src, out, frame, report, key_added)
        except Exception as e:  # damaged parts of the copy (h5py and anndata raise many kinds)
            raise AnnotateError(f"cannot write the annotated copy of {src}: the file is damaged or not a valid "
                                f"h5ad ({e}); nothing was written to {out}") from e
    else:
        with _output_tmp(out) as tmp:
            table = _prefixed(frame, key_added)
            table.index.name = "obs_names"
            if out.suffix == ".csv":
                table.to_csv(tmp)
            else:
                table.to_parquet(tmp)
    return report
