"""Fitting the paper's non-neural baselines: XGBoost on the pca stage's embedding, CellTypist on a random
subsample of the train split (sparse, normalised, at most the cells ``models.celltypist.max_memory_gib`` fits).
They come out as classifiers like every other kind; the one training entry (:func:`sctab.train.fitting.fit`)
scores them, writes their folder and tracks the run.

XGBoost has one fitting function, :func:`fit_xgboost_shard` (one worker's rows, its DMatrix, ``xgb.train``).
Here it runs in this process as rank 0 of 1 (Ray Tune trials, sweeps, local runs: a trial cannot start a
nested Ray Train run, and its ``on_step`` reports are what ASHA compares); the train stage runs it on
``models.xgboost.num_workers`` Ray Train workers (:mod:`sctab.train.ray_xgboost`).
"""

from __future__ import annotations

import logging
import resource
import time
from pathlib import Path
from typing import Callable

import numpy as np

from sctab.data.pca import PCAModel, load_embedding, load_embedding_shard
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
from sctab.models.xgboost_model import (
    EveryNRounds,
    XGBoostClassifier,
    XGBoostConfigError,
    best_rounds,
    make_dmatrix,
    predict_proba,
    train_booster,
)
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


def check_pca_dir(spec: BaselineSpec) -> None:
    if spec.pca_dir is None or not Path(spec.pca_dir).is_dir():
        raise BaselineError(f"XGBoost needs the pca stage's output; {spec.pca_dir} is not a folder "
                            f"(run `dvc repro pca`)")


def peak_rss_mib() -> float:
    """This process's peak resident memory so far (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def fit_xgboost_shard(pca_dir: str, n_classes: int, class_weights: np.ndarray, config: dict, rank: int = 0,
                      world_size: int = 1, every: EveryNRounds | None = None):
    """The one XGBoost fit: worker ``rank`` of ``world_size`` reads only its contiguous rows of the train and
    val embedding, builds its class-weighted DMatrices (the shard copies are dropped once they are built) and
    trains. With ``world_size`` > 1 it must run inside an XGBoost collective (a Ray Train XGBoost worker)."""
    dtrain = make_dmatrix(*load_embedding_shard(pca_dir, "train", rank, world_size), class_weights)
    if dtrain.num_row() == 0:
        raise XGBoostConfigError("the training split is empty")
    dval = make_dmatrix(*load_embedding_shard(pca_dir, "val", rank, world_size), class_weights)
    return train_booster(dtrain, dval if dval.num_row() else None, n_classes, config, every)


def xgboost_result(spec: BaselineSpec, config: dict, store: Store, booster, **info):
    """(classifier, info) of a fitted booster, whichever way it was trained."""
    clf = XGBoostClassifier(booster, PCAModel.load(spec.pca_dir), FeatureSpace.of(store), config)
    return clf, {"best_rounds": best_rounds(booster), "rounds_run": booster.num_boosted_rounds(),
                 "train_cells": int(len(load_embedding(spec.pca_dir, "train")[1])), **info}


def _train_xgboost(spec: BaselineSpec, config: dict, store: Store, on_step: StepHook | None):
    """In this process, as rank 0 of 1 (what Tune trials run); ``on_step`` sees validation scores."""
    check_pca_dir(spec)
    every = None
    if on_step is not None:
        val = load_embedding(spec.pca_dir, "val")

        def hook(rounds, booster):
            p = predict_proba(booster, val[0], store.n_classes, rounds=rounds)
            on_step(rounds, {f"val_{k}": v for k, v in score_probs(val[1], p, store).items() if k != "rows"})
        every = EveryNRounds(spec.report_every, hook)
    booster = fit_xgboost_shard(spec.pca_dir, store.n_classes, store.class_weights(), config, every=every)
    return xgboost_result(spec, config, store, booster, num_workers=1, worker_peak_rss_mib=[peak_rss_mib()])


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
