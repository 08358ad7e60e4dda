"""The paper's non-neural baselines, trained and scored like the neural models.

XGBoost reads the ``pca`` stage's embedding; CellTypist reads a random subsample of the train split (dense,
normalised). Both are scored with the same ontology-corrected macro F1 on val/test, logged to MLflow with
the same lineage tags, and written as a model folder:

    model.ubj | model.pkl   the model in its library's own format (XGBoost UBJ; CellTypist's file)
    pca.npz                 (XGBoost) the projection it was trained on, so the folder stands alone
    model.yaml              model name, settings, sizes, normalisation, lineage
    var.parquet, cell_type.parquet, metrics.json
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import yaml

from sctab.data.store import Store
from sctab.train.fit import FitResult, metrics_from_probs

BASELINES = ("xgboost", "celltypist")
StepHook = Callable[[int, dict], None]


class BaselineError(ValueError):
    """A baseline cannot be trained with what it was given."""


@dataclass
class TrainedBaseline:
    model_name: str
    model: object
    config: dict
    val: tuple[np.ndarray, np.ndarray]           # (codes, probabilities)
    test: tuple[np.ndarray, np.ndarray] | None
    info: dict = field(default_factory=dict)     # rounds, features, cells, seconds


def baseline_config(params: dict, model: str, overrides: dict | None = None) -> dict:
    """``models.<model>`` of params with ``overrides`` on top, checked by the model's own rules."""
    if model not in BASELINES:
        raise BaselineError(f"unknown baseline {model!r}; choose one of {', '.join(BASELINES)}")
    base = dict((params.get("models") or {}).get(model) or {})
    if not base:
        raise BaselineError(f"params have no models.{model} section")
    config = {**base, **(overrides or {})}
    return _check(model, config)


def _check(model: str, config: dict) -> dict:
    if model == "xgboost":
        from sctab.models.xgboost_model import check_config
    else:
        from sctab.models.celltypist_model import check_config
    return check_config(config)


def train_baseline(model: str, config: dict, store: Store, pca_dir: str | Path | None = None, *,
                   evaluate_test: bool = True, on_step: StepHook | None = None, report_every: int = 10,
                   threads: int | None = None) -> TrainedBaseline:
    """Fit one baseline and score it on val (and test). ``on_step(step, metrics)`` sees intermediate
    validation scores where the model has steps (XGBoost: every ``report_every`` boosting rounds)."""
    config = _check(model, config)
    if threads is not None:
        config = {**config, ("nthread" if model == "xgboost" else "n_jobs"): int(threads)}
    t0 = time.perf_counter()
    if model == "xgboost":
        return _train_xgboost(config, store, pca_dir, evaluate_test, on_step, report_every, t0)
    return _train_celltypist(config, store, evaluate_test, t0)


def _train_xgboost(config, store, pca_dir, evaluate_test, on_step, report_every, t0) -> TrainedBaseline:
    from sctab.data.pca import load_embedding
    from sctab.models.xgboost_model import EveryNRounds, best_rounds, fit_xgboost, predict_proba

    if pca_dir is None or not Path(pca_dir).is_dir():
        raise BaselineError(f"XGBoost needs the pca stage's output; {pca_dir} is not a folder (run `dvc repro pca`)")
    train, val = load_embedding(pca_dir, "train"), load_embedding(pca_dir, "val")
    every = None
    if on_step is not None:
        def hook(rounds, booster):
            p = predict_proba(booster, val[0], store.n_classes, rounds=rounds)
            on_step(rounds, {f"val_{k}": v for k, v in metrics_from_probs(val[1], p, store).items() if k != "rows"})
        every = EveryNRounds(report_every, hook)
    booster = fit_xgboost(train, val, store.n_classes, store.class_weights(), config, every=every)
    fit_s = time.perf_counter() - t0
    val_p = (val[1], predict_proba(booster, val[0], store.n_classes))
    test_p = None
    if evaluate_test:
        z, y = load_embedding(pca_dir, "test")
        test_p = (y, predict_proba(booster, z, store.n_classes))
    return TrainedBaseline("xgboost", booster, config, val_p, test_p,
                           {"best_rounds": best_rounds(booster), "rounds_run": booster.num_boosted_rounds(),
                            "train_cells": int(len(train[1])), "train_seconds": fit_s})


def _train_celltypist(config, store, evaluate_test, t0) -> TrainedBaseline:
    from sctab.models.celltypist_model import fit_celltypist, predict_split, sample_train

    x, y = sample_train(store, int(config.get("n_cells", 1_500_000)), int(config.get("seed", 0)))
    model = fit_celltypist(x, y, store, config)
    n_cells = int(len(y))
    del x
    fit_s = time.perf_counter() - t0
    val_p = predict_split(model, store, "val")
    test_p = predict_split(model, store, "test") if evaluate_test else None
    return TrainedBaseline("celltypist", model, config, val_p, test_p,
                           {"n_features": int(len(model.features)), "train_cells": n_cells,
                            "train_seconds": fit_s})


def score(trained: TrainedBaseline, store: Store) -> dict:
    """Flat metrics: val_/test_ f1_macro, accuracy, loss, plus the fit's own numbers."""
    out = {f"val_{k}": v for k, v in metrics_from_probs(*trained.val, store).items() if k != "rows"}
    if trained.test is not None:
        out.update({f"test_{k}": v for k, v in metrics_from_probs(*trained.test, store).items() if k != "rows"})
    out.update(trained.info)
    return out


def save_baseline_folder(out_dir: str | Path, trained: TrainedBaseline, store: Store, pca_dir: str | Path | None,
                         meta: dict, metrics: dict) -> Path:
    """The model folder, written atomically."""
    from sctab.io import atomic_dir

    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        if trained.model_name == "xgboost":
            from sctab.models.xgboost_model import save_xgboost

            save_xgboost(trained.model, tmp)
            shutil.copy2(Path(pca_dir) / "pca.npz", tmp / "pca.npz")
            model_file, inputs = "model.ubj", "pca.npz projection of the normalised genes"
        else:
            from sctab.models.celltypist_model import save_celltypist

            model_file, inputs = save_celltypist(trained.model, tmp).name, "normalised genes (model.features)"
        desc = {"model": trained.model_name, "model_file": model_file, "input": inputs,
                "config": trained.config, "n_genes": store.n_genes, "n_classes": store.n_classes,
                "normalisation": {"target_sum": float(store.report().get("target_sum", 10000.0)), "log1p": True},
                **meta}
        (tmp / "model.yaml").write_text(yaml.safe_dump(desc, sort_keys=False))
        store.var[["feature_id", "feature_name"]].to_parquet(tmp / "var.parquet", index=False)
        store.lookup("cell_type")[["label"]].to_parquet(tmp / "cell_type.parquet", index=False)
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    return out_dir


def fit_baseline(model: str, params: dict, *, store: str | Path, pca_dir: str | Path | None = None,
                 out_dir: str | Path | None = None, experiment: str = "train", run_name: str | None = None,
                 parent_run_id: str | None = None, overrides: dict | None = None, extra_tags: dict | None = None,
                 evaluate_test: bool = True, on_step: StepHook | None = None, report_every: int = 10,
                 threads: int | None = None) -> FitResult:
    """Train one baseline in its own MLflow run (settings as params, lineage tags, metrics, the folder)."""
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    from sctab.tracking.runs import experiment_id, flatten, lineage_tags, tracking_uri

    if model not in BASELINES:
        raise BaselineError(f"unknown baseline {model!r}; choose one of {', '.join(BASELINES)}")
    raw = {**((params.get("models") or {}).get(model) or {}), **(overrides or {})}
    uri = tracking_uri()
    client = MlflowClient(uri)
    tags = lineage_tags(params, seed=raw.get("seed", 0), model_type=model, **(extra_tags or {}))
    if parent_run_id:
        tags["mlflow.parentRunId"] = parent_run_id
    run = client.create_run(experiment_id(experiment, uri), run_name=run_name or model, tags=tags)
    run_id = run.info.run_id
    # the run exists before the settings are checked, so a study records a bad trial as a failed run
    client.log_batch(run_id, params=[Param(k, v) for k, v in flatten(raw).items()])

    def step_hook(step: int, m: dict) -> None:
        ts = int(time.time() * 1000)
        client.log_batch(run_id, metrics=[Metric(k, float(v), ts, step) for k, v in m.items()])
        if on_step is not None:
            on_step(step, m)

    try:
        config = baseline_config(params, model, overrides)
        st = Store(store)
        trained = train_baseline(model, config, st, pca_dir, evaluate_test=evaluate_test, on_step=step_hook,
                                 report_every=report_every, threads=threads)
        metrics = score(trained, st)
        bad = [k for k in ("val_f1_macro", "test_f1_macro") if k in metrics and not np.isfinite(metrics[k])]
        if bad:
            raise BaselineError(f"{model}: objective {bad[0]} is {metrics[bad[0]]} (not a number)")
        ts = int(time.time() * 1000)
        client.log_batch(run_id, metrics=[Metric(f"final_{k}", float(v), ts, 0) for k, v in metrics.items()])
        out = None
        if out_dir is not None:
            meta = {"run_id": run_id, **{k: tags[k] for k in ("git_commit", "profile", "data_version")}}
            out = save_baseline_folder(out_dir, trained, st, pca_dir, meta, _for_file(metrics))
            client.log_artifacts(run_id, str(out), artifact_path="model")
        client.set_terminated(run_id, "FINISHED")
        return FitResult(run_id=run_id, out_dir=out, metrics=metrics)
    except BaseException as e:
        # KeyboardInterrupt: Ctrl+C; SystemExit: Ray Tune stopping a trial early (ASHA). Neither is a failure.
        stopped = isinstance(e, (KeyboardInterrupt, SystemExit))
        if not stopped:
            client.set_tag(run_id, "error", f"{type(e).__name__}: {e}"[:5000])
        client.set_terminated(run_id, "KILLED" if stopped else "FAILED")
        raise


def _for_file(metrics: dict) -> dict:
    """Metrics for files DVC tracks: timings drop out so re-runs compare on what matters."""
    return {k: (round(float(v), 6) if isinstance(v, (float, np.floating)) else v)
            for k, v in metrics.items() if k != "train_seconds"}
