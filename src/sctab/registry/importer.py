"""Register published scTab checkpoints (one per seed) as one version of the ensemble.

Each checkpoint (a Lightning ``.ckpt`` with ``classifier.``-prefixed TabNet weights and an ``hparams.yaml``)
is read without unpickling code (:func:`sctab.models.published.read_published_checkpoint`) and written as
one of our model folders; together they form an ensemble folder that registers like the pipeline's own.
The published ``var.parquet`` gives the genes, the ``cell_type.parquet`` lookup the classes (Cell
Ontology ids from its ``ontology_term_id`` column, or from the labels through the ontology).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pandas as pd

from sctab import models
from sctab.data.store import Store
from sctab.evaluate.scores import score_split
from sctab.models import FeatureSpace, TorchClassifier
from sctab.models.published import load_published_sctab, read_published_checkpoint, tabnet_kwargs_from_hparams
from sctab.ontology.cell_ontology import load_cell_ontology
from sctab.registry.register import RegisteredVersion, RegistryError, register_folder


def _read_table(path: str | Path, what: str) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise RegistryError(f"{what} file {path} does not exist")
    return pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)


def write_ensemble_folder(checkpoints: list[str | Path], var: pd.DataFrame, labels: list[str], out: Path,
                          target_sum: float = 10_000.0) -> Path:
    if not checkpoints:
        raise RegistryError("no checkpoint given")
    members = {}
    for i, ckpt in enumerate(checkpoints):
        ckpt = Path(ckpt)
        model = load_published_sctab(ckpt)
        hp = read_published_checkpoint(ckpt).hparams
        arch = {k: v for k, v in tabnet_kwargs_from_hparams(hp, str(ckpt)).items()
                if k not in ("input_dim", "output_dim")}
        if model.input_dim != len(var):
            raise RegistryError(f"{ckpt} takes {model.input_dim} genes but the gene table has {len(var)}")
        if model.output_dim != len(labels):
            raise RegistryError(f"{ckpt} predicts {model.output_dim} classes but the cell type table has "
                                f"{len(labels)}")
        space = FeatureSpace(var=var[["feature_id", "feature_name"]].reset_index(drop=True), classes=list(labels))
        clf = TorchClassifier(kind="sctab", module=model, space=space, config=arch)
        folder = models.save(out / f"seed_{i}", clf, target_sum=target_sum,
                             meta={"run_id": "", "seed": i, "source_checkpoint": str(ckpt.resolve())})
        members[folder.name] = ""
    models.save_ensemble_summary(out, {"model": "sctab", "members": members, "seeds": list(range(len(checkpoints)))})
    return out


def _test_f1(folder: Path, store: str | Path) -> float:
    return float(score_split(models.load(folder), Store(store), "test")["f1_macro"])


def import_checkpoints(checkpoints: list[str | Path], *, var_path: str | Path, cell_types_path: str | Path,
                       name: str, ontology_path: str | Path, params: dict, store: str | Path | None = None,
                       test_f1: float | None = None, alias: str = "challenger") -> RegisteredVersion:
    """Register the checkpoints as one ensemble version of ``name`` (test F1 given, or scored on ``store``)."""
    var = _read_table(var_path, "gene (var)")
    if "feature_id" not in var.columns:
        raise RegistryError(f"{var_path} has no feature_id column (columns: {list(var.columns)})")
    if "feature_name" not in var.columns:
        var = var.assign(feature_name=var["feature_id"])
    ct = _read_table(cell_types_path, "cell type")
    label_col = "label" if "label" in ct.columns else ("cell_type" if "cell_type" in ct.columns else None)
    if label_col is None:
        raise RegistryError(f"{cell_types_path} has no label (or cell_type) column (columns: {list(ct.columns)})")
    labels = ct[label_col].astype(str).tolist()
    onto = load_cell_ontology(ontology_path)
    if "ontology_term_id" in ct.columns:
        class_ids = dict(zip(labels, ct["ontology_term_id"].astype(str)))
    else:
        try:
            class_ids = {lab: onto.term_id(lab) for lab in labels}
        except (KeyError, ValueError) as e:
            raise RegistryError(f"a cell type of {cell_types_path} is not a Cell Ontology label: {e}") from e
    with tempfile.TemporaryDirectory(prefix="sctab-import-") as tmp:
        folder = write_ensemble_folder(checkpoints, var, labels, Path(tmp) / "sctab")
        if test_f1 is None and store is not None:
            test_f1 = _test_f1(folder, store)
        return register_folder(folder, name, class_ids=class_ids, ontology=onto, params=params, test_f1=test_f1,
                               alias=alias, extra_tags={"imported_checkpoints": ",".join(str(c) for c in checkpoints)})
