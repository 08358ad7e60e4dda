"""``sctab promote --check FILE.h5ad``: what a promotion would change on a user's own cells, and its record.

Why: test macro F1 on the census says whether a version is better on average, not what it does to the cells
a lab annotates every week. The check annotates FILE with the candidate version and with the current
@champion in one pass (``annotate_file(..., compare_with=...)``) and summarises the changes by label pair
(:mod:`sctab.annotation.changes`). The summary is recorded with the promotion as an MLflow run of the
``registry`` experiment (``promote <name> v<N>``), its artifacts ``promotion_check/<FILE stem>.changes.json``
and ``.changes.md``; the promoted version points at that run with its tag ``promotion_check_run``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

CHECK_ARTIFACTS = "promotion_check"
EXPERIMENT = "registry"


@dataclass
class Check:
    """The changes on FILE from the champion's labels to the candidate's, and where their files were written."""

    file: str
    changes: object          # sctab.annotation.changes.Changes
    files: tuple[Path, Path]  # .changes.json and .changes.md (in a temporary folder until recorded)

    def summary(self) -> str:
        """One line for a tag: cells and the share of each change."""
        ch = self.changes
        return f"{ch.n_cells:,} cells of {Path(self.file).name}: " + ", ".join(
            f"{k} {v:.1%}" for k, v in ch.shares().items())


def run_check(name: str, candidate: str, champion: str, file: str | Path, folder: Path, *,
              trust_pickle: bool = False, ontology=None) -> Check:
    """Annotate ``file`` with versions ``candidate`` and ``champion`` of ``name`` in one pass; the changes,
    written into ``folder``. AnnotateError (nothing promoted) when the file or a version cannot be used."""
    from sctab.annotation import annotate_file
    from sctab.annotation.changes import changes_paths

    file = Path(file)
    out = Path(folder) / f"{file.stem}.parquet"  # the per-cell table is not kept: only the summary is recorded
    report = annotate_file(file, out, f"models:/{name}/{candidate}", compare_with=f"models:/{name}/{champion}",
                           trust_pickle=trust_pickle, ontology=ontology, progress=False)
    return Check(file=str(file), changes=report.changes, files=changes_paths(out))


def record_check(name: str, candidate: str, champion: str, check: Check) -> str:
    """Log the check as a run of the ``registry`` experiment; its run id."""
    from sctab.tracking import tracked_run

    tags = {"promoted_model": name, "promoted_version": candidate, "previous_champion": champion}
    with tracked_run(EXPERIMENT, name=f"promote {name} v{candidate}", tags=tags,
                     log_params={"check_file": check.file, "candidate": candidate, "champion": champion}) as run:
        ch = check.changes
        run.log_metrics({"check_cells": ch.n_cells, **{f"check_{k}": v for k, v in ch.totals.items()}})
        for path in check.files:
            run.log_file(path, CHECK_ARTIFACTS)
        return run.run_id
