"""Where annotate's results go: obs columns named ``<key_added>_<column>``, the probabilities (obsm, or table
columns), the uns entries, and ``annotate_file``'s outputs, each written into place only when whole: an
.h5ad output is a copy of the input with the new obs columns (written through h5py into a temporary file that is
renamed into place, so X is never loaded whole); .csv and .parquet outputs hold the new columns indexed by
obs_names; the comparison and the changes go beside the output.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from sctab.annotation.annotation_report import AnnotationReport
from sctab.annotation.annotator import Annotator
from sctab.annotation.errors import AnnotateError
from sctab.annotation.predict import Streamed

OUTPUT_SUFFIXES = (".h5ad", ".csv", ".parquet")


def prefixed(frame: pd.DataFrame, key_added: str) -> pd.DataFrame:
    return frame.rename(columns={c: f"{key_added}_{c}" for c in frame.columns})


def probability_table(ann: Annotator, probs: np.ndarray, index, key_added: str) -> pd.DataFrame:
    """The probability matrix as table columns ``<key>_probabilities:<class label>``."""
    columns = [f"{key_added}_probabilities:{c}" for c in ann.bundle.space.classes]
    return pd.DataFrame(probs, index=index, columns=columns)


def probability_classes(ann: Annotator) -> dict:
    """uns entry naming the columns of obsm['<key>_probabilities']."""
    return {"classes": list(ann.bundle.space.classes), "ontology_term_ids": list(ann.bundle.class_ids)}


def uns_entries(report: AnnotationReport, ann: Annotator, key_added: str, probabilities: bool) -> dict:
    """The uns entries of a run: the report, and the probabilities' classes, comparison and changes if any."""
    uns = {f"{key_added}_annotation": report.as_dict()}
    if probabilities:
        uns[f"{key_added}_probabilities"] = probability_classes(ann)
    if report.comparison is not None:
        uns[f"{key_added}_compare"] = report.comparison.as_uns()
    if report.changes is not None:
        uns[f"{key_added}_changes"] = report.changes.as_uns()
    return uns


def add_to_adata(target, streamed: Streamed, report: AnnotationReport, ann: Annotator, key_added: str,
                 probabilities: bool) -> None:
    """Write the run's columns, probabilities and uns entries into the AnnData ``target``."""
    for c, v in prefixed(streamed.frame, key_added).items():
        target.obs[c] = v.to_numpy()
    if probabilities:
        target.obsm[f"{key_added}_probabilities"] = streamed.probabilities
    target.uns.update(uns_entries(report, ann, key_added, probabilities))


def write_file(src: Path, out: Path, streamed: Streamed, report: AnnotationReport, ann: Annotator,
               key_added: str, probabilities: bool, legacy=None) -> None:
    """``out`` (.h5ad, .csv or .parquet) and its side files, all or nothing; ``legacy``: an old-format input
    read whole (it is written out again rather than copied)."""
    uns = uns_entries(report, ann, key_added, probabilities)
    obsm = {f"{key_added}_probabilities": streamed.probabilities} if probabilities else {}
    with side_files(out, report.comparison, report.changes):
        write_output(src, out, streamed, key_added, legacy, uns, obsm, ann, probabilities)


@contextlib.contextmanager
def output_tmp(out: Path):
    """A temporary file beside ``out``, renamed onto it when the block succeeds, removed otherwise."""
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


@contextlib.contextmanager
def side_files(out: Path, result, changes):
    """Write ``<OUT stem>.compare.json``/``.md`` (``result``) and ``.changes.json``/``.md`` (``changes``) into
    place only if the block (the main output) succeeds."""
    from sctab.annotation.changes import changes_paths
    from sctab.annotation.compare import compare_paths

    with contextlib.ExitStack() as stack:
        for doc, paths in ((result, compare_paths), (changes, changes_paths)):
            if doc is None:
                continue
            js, md = paths(out)
            stack.enter_context(output_tmp(js)).write_text(doc.to_json())
            stack.enter_context(output_tmp(md)).write_text(doc.to_markdown())
        yield


def write_output(src: Path, out: Path, streamed: Streamed, key_added: str, legacy, uns: dict, obsm: dict,
                 ann: Annotator, probabilities: bool) -> None:
    frame = streamed.frame
    if out.suffix == ".h5ad" and legacy is not None:
        for c, v in prefixed(frame, key_added).items():
            legacy.obs[c] = v.to_numpy()
        legacy.uns.update(uns)
        for k, v in obsm.items():
            legacy.obsm[k] = v
        with output_tmp(out) as tmp:
            legacy.write_h5ad(tmp)
    elif out.suffix == ".h5ad":
        try:
            write_h5ad(src, out, frame, key_added, uns, obsm)
        except Exception as e:  # damaged parts of the copy (h5py and anndata raise many kinds)
            raise AnnotateError(f"cannot write the annotated copy of {src}: the file is damaged or not a valid "
                                f"h5ad ({e}); nothing was written to {out}") from e
    else:
        with output_tmp(out) as tmp:
            table = prefixed(frame, key_added)
            if probabilities:
                table = pd.concat([table, probability_table(ann, streamed.probabilities, table.index, key_added)],
                                  axis=1)
            table.index.name = "obs_names"
            if out.suffix == ".csv":
                table.to_csv(tmp)
            else:
                table.to_parquet(tmp)


def write_h5ad(src: Path, out: Path, frame: pd.DataFrame, key_added: str, uns: dict, obsm: dict) -> None:
    """A copy of ``src`` with the new obs columns and the uns and obsm entries, checked readable."""
    import anndata.io as aio
    import h5py

    with output_tmp(out) as tmp:
        shutil.copyfile(src, tmp)
        with h5py.File(tmp, "r+") as f:
            obs = aio.read_elem(f["obs"])
            for c, v in prefixed(frame, key_added).items():
                obs[c] = v.to_numpy()
            del f["obs"]
            aio.write_elem(f, "obs", obs)
            for group, items in (("uns", uns), ("obsm", obsm)):
                if not items:
                    continue
                if group not in f:
                    aio.write_elem(f, group, {})
                for name, value in items.items():
                    if name in f[group]:
                        del f[group][name]
                    aio.write_elem(f[group], name, value)
        check_readable(tmp)


def check_readable(path: Path) -> None:
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
