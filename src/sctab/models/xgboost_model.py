"""XGBoost on the PCA embedding (paper, Methods "XGBoost model").

``multi:softprob`` over every class of the store, cells weighted by their class weight (as for the neural
models), early stopping on the validation split. The booster is saved in XGBoost's own UBJ format, never
pickled, so loading a model cannot run code.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Callable

import numpy as np

from sctab.config import ConfigError, check_device
from sctab.data.pca import PCAModel
from sctab.models.classifier import Classifier, ClassifierError, FeatureSpace, first_difference

# Booster settings we let through from params / search spaces (XGBoost names); ours: n_estimators, early
# stopping, device "auto", seed. Anything else is a typo until proven otherwise.
BOOSTER_KEYS = {
    "eta", "subsample", "max_depth", "min_child_weight", "colsample_bytree", "colsample_bylevel",
    "colsample_bynode", "gamma", "reg_lambda", "reg_alpha", "max_bin", "max_delta_step", "tree_method",
    "grow_policy", "max_leaves", "nthread",
}
# num_workers: Ray workers of the train stage's data-parallel fit (nthread stays the threads of each worker)
OWN_KEYS = {"n_estimators", "early_stopping_rounds", "device", "seed", "num_workers"}
CONFIG_KEYS = BOOSTER_KEYS | OWN_KEYS
# XGBoost's own defaults (xgboost 3.x docs): the "default parameters" column of Supp. Table 4.
LIBRARY_DEFAULTS = {"n_estimators": 100, "eta": 0.3, "max_depth": 6, "subsample": 1.0,
                    "early_stopping_rounds": None}


class XGBoostConfigError(ValueError):
    """An XGBoost setting is unknown or out of range."""


def check_config(config: dict) -> dict:
    """The config with every key known and every number in range; raises naming the culprit."""
    unknown = sorted(set(config) - CONFIG_KEYS)
    if unknown:
        raise XGBoostConfigError(f"unknown XGBoost setting(s) {unknown}; known: {sorted(CONFIG_KEYS)}")
    c = dict(config)
    n = c.get("n_estimators", 100)
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
        raise XGBoostConfigError(f"n_estimators must be a positive integer, got {n!r}")
    nw = c.get("num_workers", 1)
    if not isinstance(nw, (int, np.integer)) or isinstance(nw, bool) or nw < 1:
        raise XGBoostConfigError(f"num_workers must be a positive integer, got {nw!r}")
    es = c.get("early_stopping_rounds")
    if es is not None and (not isinstance(es, (int, np.integer)) or es < 1):
        raise XGBoostConfigError(f"early_stopping_rounds must be a positive integer or null, got {es!r}")
    for key, lo, hi, lo_open in (("eta", 0.0, math.inf, True), ("subsample", 0.0, 1.0, True),
                                 ("colsample_bytree", 0.0, 1.0, True), ("colsample_bylevel", 0.0, 1.0, True),
                                 ("colsample_bynode", 0.0, 1.0, True), ("max_depth", 0, math.inf, False),
                                 ("min_child_weight", 0.0, math.inf, False), ("gamma", 0.0, math.inf, False),
                                 ("reg_lambda", 0.0, math.inf, False), ("reg_alpha", 0.0, math.inf, False)):
        if key not in c:
            continue
        v = c[key]
        if not isinstance(v, (int, float, np.number)) or isinstance(v, bool) or not math.isfinite(v) \
                or v > hi or v < lo or (lo_open and v == lo):
            side = "(" if lo_open else "["
            raise XGBoostConfigError(f"{key} must be a number in {side}{lo}, {hi}], got {v!r}")
    try:
        check_device(c.get("device", "auto"), "device")
    except ConfigError as e:
        raise XGBoostConfigError(str(e)) from None
    return c


def resolve_device(device: str | None) -> str:
    """XGBoost's ``device`` under the one policy (:mod:`sctab.models.device`): ``auto`` means the GPU when torch
    can use one, and trials, final training and prediction all resolve it the same way; ``cuda`` where there
    is no usable GPU is a DeviceError naming the torch build."""
    from sctab.models.device import resolve_device as policy

    return str(policy(device))


def booster_params(config: dict, n_classes: int) -> dict:
    """The ``xgb.train`` parameter dict for a checked config."""
    c = check_config(config)
    p = {"objective": "multi:softprob", "num_class": int(n_classes), "eval_metric": "mlogloss",
         "tree_method": "hist", "device": resolve_device(c.get("device")), "seed": int(c.get("seed", 0))}
    p.update({k: v for k, v in c.items() if k in BOOSTER_KEYS})
    if "max_depth" in p:
        p["max_depth"] = int(p["max_depth"])
    return p


class EveryNRounds:
    """A hook called with (rounds done, booster) every ``n`` boosting rounds (Ray Tune's per-step reports)."""

    def __init__(self, n: int, fn: Callable[[int, object], bool | None]):
        import xgboost as xgb

        outer = self

        class _CB(xgb.callback.TrainingCallback):
            def after_iteration(self, model, epoch, evals_log):
                if (epoch + 1) % outer.n == 0:
                    return bool(outer.fn(epoch + 1, model))
                return False

        self.n = max(1, int(n))
        self.fn = fn
        self.callback = _CB()


def make_dmatrix(x: np.ndarray, y: np.ndarray, class_weights: np.ndarray):
    """A DMatrix of (embedding, codes), every cell weighted by its class weight (as for the neural models)."""
    import xgboost as xgb

    w = np.asarray(class_weights, dtype=np.float32)
    return xgb.DMatrix(np.asarray(x, dtype=np.float32), label=y, weight=w[np.asarray(y)])


def train_booster(dtrain, dval, n_classes: int, config: dict, every: EveryNRounds | None = None):
    """``xgb.train`` with early stopping on ``dval``'s loss (none without ``dval``). Under an XGBoost collective
    (a data-parallel Ray worker) each DMatrix holds the worker's shard; histograms and evaluation metrics are
    all-reduced, so every worker grows the same trees and stops at the same round."""
    import xgboost as xgb

    c = check_config(config)
    evals = [(dval, "val")] if dval is not None else []
    es = c.get("early_stopping_rounds") if evals else None
    return xgb.train(booster_params(c, n_classes), dtrain, num_boost_round=int(c.get("n_estimators", 100)),
                     evals=evals, early_stopping_rounds=es, verbose_eval=False,
                     callbacks=[every.callback] if every else None)


def fit_xgboost(train: tuple[np.ndarray, np.ndarray], val: tuple[np.ndarray, np.ndarray], n_classes: int,
                class_weights: np.ndarray, config: dict, every: EveryNRounds | None = None):
    """Fit a booster on (embedding, codes) with class-weighted cells; early stopping on the validation loss."""
    c = check_config(config)
    (x_tr, y_tr), (x_va, y_va) = train, val
    if len(y_tr) == 0:
        raise XGBoostConfigError("the training split is empty")
    dtrain = make_dmatrix(x_tr, y_tr, class_weights)
    dval = make_dmatrix(x_va, y_va, class_weights) if len(y_va) else None
    return train_booster(dtrain, dval, n_classes, c, every)


def best_rounds(booster) -> int:
    """Rounds up to and including the best one (all rounds without early stopping)."""
    best = booster.attr("best_iteration")
    return int(best) + 1 if best is not None else booster.num_boosted_rounds()


def predict_proba(booster, x: np.ndarray, n_classes: int, rounds: int | None = None,
                  batch_rows: int = 65536) -> np.ndarray:
    """Class probabilities (n, n_classes) from the first ``rounds`` rounds (default: up to the best)."""
    import xgboost as xgb

    rounds = best_rounds(booster) if rounds is None else rounds
    out = []
    for i in range(0, len(x), batch_rows):
        d = xgb.DMatrix(np.asarray(x[i:i + batch_rows], dtype=np.float32))
        out.append(booster.predict(d, iteration_range=(0, rounds)).astype(np.float32))
    if not out:
        return np.zeros((0, n_classes), np.float32)
    p = np.concatenate(out)
    if p.shape[1] != n_classes:
        raise XGBoostConfigError(f"the booster predicts {p.shape[1]} classes, the store has {n_classes}")
    return p


def save_xgboost(booster, folder: str | Path) -> Path:
    """``model.ubj``: XGBoost's binary JSON, loadable by any XGBoost >= 1.6 without unpickling."""
    path = Path(folder) / "model.ubj"
    booster.save_model(str(path))
    return path


def load_xgboost(path: str | Path):
    import xgboost as xgb

    path = Path(path)
    if path.is_dir():
        path = path / "model.ubj"
    if not path.exists():
        raise FileNotFoundError(f"no XGBoost model at {path}")
    if path.suffix.lower() not in (".ubj", ".json"):
        # pickled boosters (.pkl/.joblib) run code when read; XGBoost's own formats cannot
        raise ValueError(f"{path}: XGBoost models are read only from UBJ (.ubj) or JSON (.json), not "
                         f"{path.suffix or 'an unknown format'}; re-save with booster.save_model('model.ubj')")
    booster = xgb.Booster()
    booster.load_model(str(path))
    return booster


class XGBoostClassifier(Classifier):
    """A booster on the PCA embedding of the normalised genes; the projection travels with the model."""

    kind = "xgboost"
    model_file = "model.ubj"
    input_description = "pca.npz projection of the normalised genes"

    def __init__(self, booster, pca: PCAModel, space: FeatureSpace, config: dict | None = None):
        if pca.feature_id != space.genes:
            raise ClassifierError("the XGBoost model's PCA was fitted on other genes than the model's: "
                                  f"{first_difference(pca.feature_id, space.genes)}")
        self.booster, self.pca, self.space, self.config = booster, pca, space, dict(config or {})

    @property
    def device(self) -> str:
        """Where the booster trains and predicts, as XGBoost itself records it (``cpu``, ``cuda``, ``cuda:N``)."""
        return json.loads(self.booster.save_config())["learner"]["generic_param"].get("device", "cpu")

    def to(self, device) -> XGBoostClassifier:
        self.booster.set_param({"device": resolve_device(str(device))})
        return self

    def predict_proba(self, x_log1p) -> np.ndarray:
        self._check_input(x_log1p)
        return predict_proba(self.booster, self.pca.transform(x_log1p), self.n_classes)

    def save_model_file(self, folder: Path) -> None:
        save_xgboost(self.booster, folder)
        self.pca.save(folder / "pca.npz")

    @classmethod
    def load_model_file(cls, folder: Path, space: FeatureSpace, meta: dict, *, device: str = "cpu",
                        trust_pickle: bool = False) -> XGBoostClassifier:
        return cls(load_xgboost(folder), PCAModel.load(folder / "pca.npz"), space,
                   meta.get("config")).to(device)
