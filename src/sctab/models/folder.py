"""A trained model as a folder: the one writer and the one reader, for every kind and for ensembles.

    model.yaml         kind (``model:``), its settings, genes/classes counts, normalisation, lineage
    <model file>       model.pt (state dict, read with weights_only=True) | model.ubj + pca.npz (XGBoost's own
                       format) | model.pkl (CellTypist's own format, a pickle: read only when trusted)
    var.parquet        the genes in input order (feature_id, feature_name)
    cell_type.parquet  the classes in output order (column ``label``)
    metrics.json       the fit's scores (DVC-tracked: no timings, so re-runs compare on what matters)
    history.csv        one row per epoch (neural kinds)
    seeds.json         (optional) the same fit's scores over several seeds: the spread of a single model

An ensemble folder holds ``ensemble.json`` and one such folder per member (``seed_<n>/``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import yaml

from sctab.io import atomic_dir
from sctab.models.classifier import Classifier, ClassifierError, Ensemble, FeatureSpace
from sctab.models.kinds import classifier_class
from sctab.models.neural import TorchClassifier
from sctab.security import UntrustedPickleError, require_trusted_pickle

__all__ = ["save", "load", "save_ensemble_summary", "read_meta", "member_folders", "ModelFolderError",
           "is_model_folder", "COMMON_FILES", "ENSEMBLE_FILE", "SEEDS_FILE"]

COMMON_FILES = ("model.yaml", "var.parquet", "cell_type.parquet")
ENSEMBLE_FILE = "ensemble.json"
SEEDS_FILE = "seeds.json"  # a single model's scores when the same fit ran with other seeds too (their spread)


class ModelFolderError(ClassifierError):
    """A model folder is missing, incomplete, of an unknown kind, or does not match its description."""


def _config_key(clf: Classifier) -> str:
    return "arch" if isinstance(clf, TorchClassifier) else "config"


def save(out_dir: str | Path, clf: Classifier, *, target_sum: float, meta: dict | None = None,
         metrics: dict | None = None, history: list[dict] | None = None) -> Path:
    """Write ``clf`` as a model folder, atomically (it appears complete or not at all)."""
    if isinstance(clf, Ensemble):
        raise ModelFolderError("write ensemble members one by one with save(), then save_ensemble_summary()")
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        clf.save_model_file(tmp)
        desc = {"model": clf.kind, "model_file": clf.model_file, "input": clf.input_description,
                _config_key(clf): dict(clf.config),
                "n_genes": clf.space.n_genes, "n_classes": clf.space.n_classes,
                "normalisation": {"target_sum": float(target_sum), "log1p": True}, **(meta or {})}
        (tmp / "model.yaml").write_text(yaml.safe_dump(desc, sort_keys=False))
        clf.space.var[["feature_id", "feature_name"]].to_parquet(tmp / "var.parquet", index=False)
        pd.DataFrame({"label": clf.space.classes}).to_parquet(tmp / "cell_type.parquet", index=False)
        (tmp / "metrics.json").write_text(json.dumps(metrics or {}, indent=2, sort_keys=True) + "\n")
        if history is not None:
            pd.DataFrame(history).to_csv(tmp / "history.csv", index=False)
    return out_dir


def save_ensemble_summary(folder: str | Path, summary: dict) -> Path:
    """``ensemble.json`` beside the member folders; ``summary["members"]`` maps folder name -> run id."""
    path = Path(folder) / ENSEMBLE_FILE
    missing = [m for m in summary.get("members") or {} if not (Path(folder) / m / "model.yaml").exists()]
    if missing:
        raise ModelFolderError(f"ensemble {folder}: member folder(s) {missing} are not written yet")
    path.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return path


def is_model_folder(path: str | Path) -> bool:
    path = Path(path)
    return (path / "model.yaml").is_file() or (path / ENSEMBLE_FILE).is_file()


def read_meta(path: str | Path) -> dict:
    """``model.yaml`` of a member folder, or ``ensemble.json`` of an ensemble folder, as a dict."""
    path = Path(path)
    f = path / ENSEMBLE_FILE if (path / ENSEMBLE_FILE).exists() else path / "model.yaml"
    try:
        doc = json.loads(f.read_text()) if f.suffix == ".json" else yaml.safe_load(f.read_text())
    except (OSError, ValueError, yaml.YAMLError) as e:
        raise ModelFolderError(f"cannot read {f}: {e}") from e
    if not isinstance(doc, dict):
        raise ModelFolderError(f"{f} is not a mapping")
    return doc


def _seed_order(folder: Path) -> tuple[int, str]:
    m = re.fullmatch(r"seed_(-?\d+)", folder.name)
    return (int(m.group(1)) if m else 1 << 62, folder.name)


def member_folders(path: str | Path) -> list[Path]:
    """The folders of an ensemble's members in seed order (those ensemble.json names), or ``[path]``."""
    path = Path(path)
    if not (path / ENSEMBLE_FILE).exists():
        return [path]
    listed = list((read_meta(path).get("members") or {}).keys())
    if listed:
        missing = [m for m in listed if not (path / m).is_dir()]
        if missing:
            raise ModelFolderError(f"ensemble {path} lacks member folder(s) {missing} named in {ENSEMBLE_FILE}")
        folders = [path / m for m in listed]
    else:
        folders = [p for p in path.glob("seed_*") if p.is_dir()]
    if not folders:
        raise ModelFolderError(f"ensemble {path} has {ENSEMBLE_FILE} but no member folders")
    return sorted(folders, key=_seed_order)


def _load_one(path: Path, device: str, trust_pickle: bool) -> Classifier:
    if not (path / "model.yaml").exists():
        raise ModelFolderError(f"{path} is not a model folder: no model.yaml (nor {ENSEMBLE_FILE} with seed_*/ "
                               f"members)")
    meta = read_meta(path)
    try:
        cls = classifier_class(str(meta.get("model", "")))
    except ValueError as e:
        raise ModelFolderError(f"{path}/model.yaml: {e}") from None
    model_file = meta.get("model_file") or cls.model_file
    if cls.pickled:  # before anything else of the folder is read
        require_trusted_pickle(path / model_file, f"a {meta['model']} model", trust_pickle)
    missing = [f for f in (*COMMON_FILES, model_file) if not (path / f).exists()]
    if missing:
        raise ModelFolderError(f"{meta['model']} model folder {path} is incomplete: lacks {', '.join(missing)}")
    var = pd.read_parquet(path / "var.parquet")
    if "feature_id" not in var.columns:
        raise ModelFolderError(f"{path}/var.parquet has no feature_id column (columns: {list(var.columns)})")
    if "feature_name" not in var.columns:
        var = var.assign(feature_name=var["feature_id"])
    classes = pd.read_parquet(path / "cell_type.parquet")["label"].astype(str).tolist()
    if len(var) != meta.get("n_genes", len(var)) or len(classes) != meta.get("n_classes", len(classes)):
        raise ModelFolderError(f"{path}: model.yaml says {meta.get('n_genes')} genes / {meta.get('n_classes')} "
                               f"classes, var.parquet has {len(var)} and cell_type.parquet {len(classes)}")
    space = FeatureSpace(var=var[["feature_id", "feature_name"]], classes=classes)
    if "config" not in meta and "arch" in meta:
        meta = {**meta, "config": meta["arch"]}
    try:
        clf = cls.load_model_file(path, space, meta, device=device, trust_pickle=trust_pickle)
    except (ModelFolderError, UntrustedPickleError):
        raise
    except Exception as e:
        raise ModelFolderError(f"cannot load the {meta['model']} model in {path}: {e}") from e
    clf.meta = meta
    clf.path = path
    return clf


def load(path: str | Path, *, device: str = "cpu", trust_pickle: bool = False) -> Classifier:
    """The classifier in a model folder (an :class:`Ensemble` for an ensemble folder).

    Raises :class:`ModelFolderError` naming what is wrong. A CellTypist model is a pickle: it loads only
    with ``trust_pickle=True`` (:mod:`sctab.security`).
    """
    path = Path(path)
    if not path.is_dir():
        raise ModelFolderError(f"model folder {path} does not exist")
    if not (path / ENSEMBLE_FILE).exists():
        return _load_one(path, device, trust_pickle)
    folders = member_folders(path)
    members = [_load_one(f, device, trust_pickle) for f in folders]
    ens = Ensemble(members_=members, names=[f.name for f in folders], meta=read_meta(path))
    ens.path = path
    return ens
