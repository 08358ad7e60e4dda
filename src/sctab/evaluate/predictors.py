"""One way to get predictions from any model folder the pipeline writes.

    load_predictor("models/linear").predict(store, "test") -> (codes, probabilities)

Kinds, told apart by the folder:
    linear / mlp / sctab   model.yaml (``model:``) + model.pt   (sctab.train.artifacts)
    xgboost                model.yaml + model.ubj + pca.npz      (its own projection, not data/pca)
    celltypist             model.yaml + model.pkl
    <model>-ensemble       ensemble.json + seed_*/ member folders (models/sctab: "sctab-ensemble"); its
                           probabilities are the mean of the members' softmax

Every kind streams the split in file order, so ``y`` equals the store's codes for that split and rows line
up with ``store.read_obs(split, ...)``. Before predicting, the folder's genes (var.parquet feature_id, in
order) and classes (cell_type.parquet label, in order) are compared with the store's.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from sctab.data.store import Store

NEURAL = ("linear", "mlp", "sctab")
KINDS = NEURAL + ("xgboost", "celltypist")
_REQUIRED = {"xgboost": ("model.ubj", "pca.npz"), "celltypist": ("model.pkl",)}
for _k in NEURAL:
    _REQUIRED[_k] = ("model.pt",)
_COMMON = ("model.yaml", "var.parquet", "cell_type.parquet")


class PredictorError(ValueError):
    """A model folder is unknown, incomplete, or does not fit the store it is asked to predict."""


def _read_yaml(path: Path) -> dict:
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise PredictorError(f"cannot read {path}: {e}") from e
    if not isinstance(doc, dict):
        raise PredictorError(f"{path} is not a mapping")
    return doc


def _first_difference(a: list[str], b: list[str]) -> str:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return f"first difference at position {i}: {x!r} vs {y!r}"
    return f"lengths {len(a)} vs {len(b)}"


def check_fits_store(path: Path, store: Store) -> None:
    """Raise PredictorError unless the folder's genes and classes are the store's, in the same order."""
    genes = pd.read_parquet(path / "var.parquet")["feature_id"].astype(str).tolist()
    store_genes = store.var["feature_id"].astype(str).tolist()
    if genes != store_genes:
        raise PredictorError(
            f"model {path} was trained on {len(genes)} genes that differ from the store's {len(store_genes)} "
            f"({store.root}): {_first_difference(genes, store_genes)}")
    classes = pd.read_parquet(path / "cell_type.parquet")["label"].astype(str).tolist()
    store_classes = store.classes
    if classes != store_classes:
        raise PredictorError(
            f"model {path} predicts {len(classes)} classes that differ from the store's {len(store_classes)} "
            f"({store.root}): {_first_difference(classes, store_classes)}")


@dataclass
class Predictor:
    """A loaded model folder. ``predict(store, split)`` -> (codes int64 (n,), probabilities float32 (n, C))."""

    name: str
    kind: str
    path: Path
    run_id: str | None
    meta: dict = field(default_factory=dict, repr=False)
    model: object = field(default=None, repr=False)

    def predict(self, store: Store, split: str, *, batch_size: int = 4096,
                device: str = "cpu") -> tuple[np.ndarray, np.ndarray]:
        check_fits_store(self.path, store)
        if self.kind in NEURAL:
            from sctab.evaluate.predict import predict_split

            y, p = predict_split(self.model, store, split, batch_size=batch_size, device=device)
        elif self.kind == "xgboost":
            y, p = self._predict_xgboost(store, split, device)
        elif self.kind == "celltypist":
            from sctab.models.celltypist_model import predict_split

            y, p = predict_split(self.model, store, split)
        else:  # pragma: no cover - load_predictor only builds the kinds above
            raise PredictorError(f"unknown predictor kind {self.kind!r}")
        return np.asarray(y, dtype=np.int64), np.asarray(p, dtype=np.float32)

    def predict_members(self, store: Store, split: str, **kw) -> tuple[np.ndarray, list[np.ndarray]]:
        """A single model is an ensemble of one."""
        y, p = self.predict(store, split, **kw)
        return y, [p]

    def _predict_xgboost(self, store: Store, split: str, device: str, rows_per_batch: int = 65536):
        from sctab.models.xgboost_model import predict_proba

        booster, pca = self.model
        if pca.feature_id != store.var["feature_id"].astype(str).tolist():
            raise PredictorError(f"the PCA in {self.path} was fitted on other genes than the store's ({store.root})")
        booster.set_param({"device": "cuda" if str(device).startswith("cuda") else "cpu"})
        ys, ps, zs, pending = [], [], [], 0

        def flush():
            nonlocal zs, pending
            if zs:
                ps.append(predict_proba(booster, np.concatenate(zs), store.n_classes))
            zs, pending = [], 0

        for g in store.iter_row_groups(split, ("X", "cell_type")):
            zs.append(pca.transform(g["X"]))
            ys.append(np.asarray(g["cell_type"], dtype=np.int64))
            pending += len(g["cell_type"])
            if pending >= rows_per_batch:
                flush()
        flush()
        if not ys:
            return np.zeros(0, np.int64), np.zeros((0, store.n_classes), np.float32)
        return np.concatenate(ys), np.concatenate(ps)


@dataclass
class EnsemblePredictor(Predictor):
    """Members' mean softmax; ``members`` are the seed_* folders' predictors in seed order."""

    members: list[Predictor] = field(default_factory=list, repr=False)

    def predict_members(self, store: Store, split: str, **kw) -> tuple[np.ndarray, list[np.ndarray]]:
        y0, probs = None, []
        for m in self.members:
            y, p = m.predict(store, split, **kw)
            if y0 is not None and not np.array_equal(y, y0):
                raise PredictorError(f"ensemble member {m.path} read the {split!r} split in another order")
            y0 = y
            probs.append(p)
        return y0, probs

    def predict(self, store: Store, split: str, **kw) -> tuple[np.ndarray, np.ndarray]:
        mean = None
        y0 = None
        for m in self.members:  # one member's probabilities in memory at a time, plus the running sum
            y, p = m.predict(store, split, **kw)
            if y0 is not None and not np.array_equal(y, y0):
                raise PredictorError(f"ensemble member {m.path} read the {split!r} split in another order")
            y0 = y
            mean = p.astype(np.float64) if mean is None else mean + p
        return y0, (mean / len(self.members)).astype(np.float32)


def _seed_of(folder: Path) -> tuple[int, str]:
    m = re.fullmatch(r"seed_(-?\d+)", folder.name)
    return (int(m.group(1)) if m else 1 << 62, folder.name)


def _load_ensemble(path: Path, device: str) -> EnsemblePredictor:
    try:
        summary = json.loads((path / "ensemble.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise PredictorError(f"cannot read {path / 'ensemble.json'}: {e}") from e
    listed = list((summary.get("members") or {}).keys())
    if listed:
        missing = [m for m in listed if not (path / m).is_dir()]
        if missing:
            raise PredictorError(f"ensemble {path} lacks member folder(s) {missing} named in ensemble.json")
        folders = sorted((path / m for m in listed), key=_seed_of)
    else:
        folders = sorted((p for p in path.glob("seed_*") if p.is_dir()), key=_seed_of)
    if not folders:
        raise PredictorError(f"ensemble {path} has ensemble.json but no seed_*/ member folders")
    members = [_load_single(f, device) for f in folders]
    model = str(summary.get("model") or members[0].kind)
    return EnsemblePredictor(name=path.name, kind=f"{model}-ensemble", path=path,
                             run_id=summary.get("parent_run_id"), meta=summary, members=members)


def _load_single(path: Path, device: str, trust_pickle: bool = False) -> Predictor:
    if not (path / "model.yaml").exists():
        raise PredictorError(f"{path} is not a model folder: no model.yaml (nor ensemble.json with seed_*/ "
                             f"members)")
    meta = _read_yaml(path / "model.yaml")
    kind = str(meta.get("model", "")).lower().strip()
    if kind not in KINDS:
        raise PredictorError(f"{path}/model.yaml names model {meta.get('model')!r}; known: {', '.join(KINDS)}")
    missing = [f for f in _COMMON + _REQUIRED[kind] if not (path / f).exists()]
    if missing:
        raise PredictorError(f"{kind} model folder {path} is incomplete: lacks {', '.join(missing)}")
    if kind in NEURAL:
        from sctab.train.artifacts import load_model_folder

        try:
            model = load_model_folder(path, device=device).model
        except Exception as e:
            raise PredictorError(f"cannot load the {kind} model in {path}: {e}") from e
    elif kind == "xgboost":
        from sctab.data.pca import PCAModel
        from sctab.models.xgboost_model import load_xgboost

        try:
            model = (load_xgboost(path), PCAModel.load(path / "pca.npz"))
        except Exception as e:
            raise PredictorError(f"cannot load the XGBoost model in {path}: {e}") from e
    else:
        from sctab.models.celltypist_model import load_celltypist

        from sctab.security import UntrustedPickleError

        try:
            model = load_celltypist(path, trust_pickle=trust_pickle)
        except UntrustedPickleError:
            raise
        except Exception as e:
            raise PredictorError(f"cannot load the CellTypist model in {path}: {e}") from e
    return Predictor(name=path.name, kind=kind, path=path, run_id=meta.get("run_id"), meta=meta, model=model)


def load_predictor(path: str | Path, *, device: str = "cpu", trust_pickle: bool = False) -> Predictor:
    """The predictor of a model folder (or ensemble folder); raises PredictorError naming what is wrong.

    A CellTypist folder holds a pickle: it loads only with ``trust_pickle=True`` (sctab.security).
    """
    path = Path(path)
    if not path.is_dir():
        raise PredictorError(f"model folder {path} does not exist")
    if (path / "ensemble.json").exists():
        return _load_ensemble(path, device)
    return _load_single(path, device, trust_pickle)
