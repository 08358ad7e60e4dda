"""Fitting the paper's non-neural baselines: XGBoost on the pca stage's embedding, CellTypist on a random
subsample of the train split (sparse, normalised, at most the cells ``models.celltypist.max_memory_gib`` fits).
They come out as classifiers like every other kind; the one training entry (:func:`sctab.train.fitting.fit`)
scores them, writes their folder and tracks the run.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Callable

from sctab.data.pca import PCAModel, load_embedding
from sctab.data.store import Store
from sctab.evaluate.scores import score_probs
from sctab.models import FeatureSpace
from sctab.models.celltypist_model import (
    GIB,
    CellTypistClassifier,
    estimate_peak_bytes,
    fit_celltypist,
    plan_sample,
    sample_train,
)
from sctab.models.celltypist_model import check_config as check_celltypist
from sctab.models.xgboost_model import EveryNRounds, XGBoostClassifier, best_rounds, fit_xgboost, predict_proba
from sctab.models.xgboost_model import check_config as check_xgboost
from sctab.models.xgboost_model import resolve_device as resolve_xgboost_device
from sctab.train.spec import BaselineSpec

log = logging.getLogger(__name__)
StepHook = Callable[[int, dict], None]
CHECKS = {"xgboost": check_xgboost, "celltypist": check_celltypist}
THREADS = {"xgboost": "nthread", "celltypist": "n_jobs"}  # each library's own name for its thread count


class BaselineError(ValueError):
    """A baseline cannot be trained with what it was given."""


def baseline_config(spec: BaselineSpec) -> dict:
    """The spec's settings checked by the model's own rules, with the thread count applied."""
    config = CHECKS[spec.model](spec.config)
    if spec.threads is not None:
        config = {**config, THREADS[spec.model]: int(spec.threads)}
    return config


def baseline_device(spec: BaselineSpec) -> str:
    """Where the baseline trains: XGBoost's ``device`` under the device policy; CellTypist on the CPU."""
    if spec.model == "xgboost":
        return resolve_xgboost_device(spec.config.get("device", "auto"))
    return "cpu"


def train_baseline(spec: BaselineSpec, on_step: StepHook | None = None):
    """Fit one baseline; return (classifier, info). ``on_step(step, metrics)`` sees intermediate validation
    scores where the model has steps (XGBoost: every ``spec.report_every`` boosting rounds)."""
    config = baseline_config(spec)
    store = Store(spec.store)
    t0 = time.perf_counter()
    clf, info = TRAINERS[spec.model](spec, config, store, on_step)
    info["train_seconds"] = time.perf_counter() - t0
    return clf, info


def _train_xgboost(spec: BaselineSpec, config: dict, store: Store, on_step: StepHook | None):
    if spec.pca_dir is None or not Path(spec.pca_dir).is_dir():
        raise BaselineError(f"XGBoost needs the pca stage's output; {spec.pca_dir} is not a folder "
                            f"(run `dvc repro pca`)")
    train, val = load_embedding(spec.pca_dir, "train"), load_embedding(spec.pca_dir, "val")
    every = None
    if on_step is not None:
        def hook(rounds, booster):
            p = predict_proba(booster, val[0], store.n_classes, rounds=rounds)
            on_step(rounds, {f"val_{k}": v for k, v in score_probs(val[1], p, store).items() if k != "rows"})
        every = EveryNRounds(spec.report_every, hook)
    booster = fit_xgboost(train, val, store.n_classes, store.class_weights(), config, every=every)
    clf = XGBoostClassifier(booster, PCAModel.load(spec.pca_dir), FeatureSpace.of(store), config)
    return clf, {"best_rounds": best_rounds(booster), "rounds_run": booster.num_boosted_rounds(),
                 "train_cells": int(len(train[1]))}


def _train_celltypist(spec: BaselineSpec, config: dict, store: Store, on_step: StepHook | None):
    plan = plan_sample(store, config)
    x, y = sample_train(store, plan["sample_cells_used"], int(config.get("seed", 0)))
    n_cells = int(len(y))
    plan["estimated_peak_gib"] = estimate_peak_bytes(n_cells, x.nnz, store.n_genes) / GIB  # the sample's own nnz
    if plan["max_memory_gib"] is not None and plan["estimated_peak_gib"] > plan["max_memory_gib"]:
        log.warning("CellTypist: the sample is denser than estimated: %.2f GiB estimated peak > max_memory_gib %g",
                    plan["estimated_peak_gib"], plan["max_memory_gib"])
    model = fit_celltypist(x, y, store, config)
    del x
    clf = CellTypistClassifier(model, FeatureSpace.of(store), config)
    return clf, {"n_features": int(len(model.features)), "train_cells": n_cells, **plan}


TRAINERS = {"xgboost": _train_xgboost, "celltypist": _train_celltypist}  # (spec, config, store, on_step) -> fit
