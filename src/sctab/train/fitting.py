"""The one training entry: any kind, any runner, one tracked run, one "after the loop" step.

    fit(spec, params, runner=RayTrainRunner(), out_dir="models/mlp")    # the train stages (XGBoost too)
    fit(spec, params, runner=TuneTrialRunner(threads=1), ...)           # a tuning trial, a sweep point
    fit(spec, params, runner=LocalRunner())                             # a quick local run

Each fit is one MLflow run (every setting as a param, lineage tags, per-epoch or per-round validation
scores while training, final scores, the model folder as artifacts). After the loop, every kind goes
through the same step: the trained classifier is scored on val (and test) by :mod:`sctab.evaluate.scores`
and written by :func:`sctab.models.save`. Deep-ensemble members carry their parent run's id.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from sctab import models
from sctab.data.store import Store
from sctab.evaluate.scores import score_splits
from sctab.io import atomic_dir
from sctab.models import Classifier
from sctab.tracking import TrackedRun, tracked_run
from sctab.train.runners import LocalRunner, RayTrainRunner, Runner, Trained
from sctab.train.spec import BaselineSpec, TrainSpec

__all__ = ["fit", "fit_ensemble", "seed_spread", "spread_of", "FitResult", "FitError", "for_file"]

#: timings and memory peaks vary run to run: MLflow keeps them, DVC-tracked files do not (re-runs compare on what
#: matters)
TIMINGS = ("train_seconds", "train_cells_per_s", "epoch_seconds", "worker_peak_rss_mib")


class FitError(RuntimeError):
    """A fit's result cannot be used (a NaN objective)."""


@dataclass
class FitResult:
    run_id: str
    out_dir: Path | None
    metrics: dict
    classifier: Classifier


def for_file(metrics: dict) -> dict:
    """Metrics for files DVC tracks: rounded, timings left out."""
    return {k: (round(float(v), 6) if isinstance(v, (float, np.floating)) else v)
            for k, v in metrics.items() if k not in TIMINGS}


def _default_runner(spec) -> Runner:
    return LocalRunner() if isinstance(spec, BaselineSpec) else RayTrainRunner()


def after_loop(spec: TrainSpec | BaselineSpec, trained: Trained, run: TrackedRun, *, out_dir=None,
               evaluate_test: bool = True, extra_eval: Callable | None = None, meta: dict | None = None) -> FitResult:
    """Score the trained classifier, check the objective, log final scores, write and log its folder."""
    store = Store(spec.store)
    clf = trained.classifier
    metrics = {**score_splits(clf, store, ("val", "test") if evaluate_test else ("val",)), **trained.info}
    if extra_eval is not None:
        metrics.update(extra_eval(clf, store, spec))
    if not math.isfinite(metrics["val_f1_macro"]):
        raise FitError(f"{spec.model}: objective val_f1_macro is {metrics['val_f1_macro']} (not a number)")
    run.log_final(metrics)
    out = None
    if out_dir is not None:
        out = models.save(out_dir, clf, target_sum=float(store.report().get("target_sum", 10000.0)),
                          meta={"run_id": run.run_id, **(meta or {})}, metrics=for_file(metrics),
                          history=None if trained.history is None else
                          [{k: v for k, v in h.items() if k not in TIMINGS} for h in trained.history])
        run.log_folder(out, "model")
    return FitResult(run_id=run.run_id, out_dir=out, metrics=metrics, classifier=clf)


def fit(spec: TrainSpec | BaselineSpec, params: dict, out_dir: str | Path | None = None, *,
        runner: Runner | None = None, experiment: str = "train", run_name: str | None = None,
        parent_run_id: str | None = None, extra_tags: dict | None = None, evaluate_test: bool = True,
        extra_eval: Callable | None = None) -> FitResult:
    """Train ``spec`` with ``runner`` (Ray Train for neural kinds, this process for baselines, by default),
    tracked in one MLflow run; score the result and write it to ``out_dir`` when given.

    ``extra_eval(classifier, store, spec) -> dict`` adds scores of the trained model (e.g. on one tissue).
    """
    runner = runner or _default_runner(spec)
    tags = {"seed": spec.seed, "model_type": spec.model, **(extra_tags or {})}
    settings = spec.to_dict()
    with tracked_run(experiment, name=run_name or spec.run_name, params=params, log_params=settings, tags=tags,
                     parent=parent_run_id) as run:
        trained = runner.train(spec, run)
        lineage = {k: v for k, v in run.client.get_run(run.run_id).data.tags.items()
                   if k in ("git_commit", "profile", "data_version")}
        meta = {"seed": spec.seed, **lineage}
        if spec.training_meta():
            meta["training"] = spec.training_meta()
        result = after_loop(spec, trained, run, out_dir=out_dir, evaluate_test=evaluate_test, extra_eval=extra_eval,
                            meta=meta)
        if "best_epoch" in result.metrics:
            run.set_tags(best_epoch=result.metrics["best_epoch"])
        return result


def fit_ensemble(base: TrainSpec, params: dict, seeds: list[int], out_dir: str | Path, *,
                 runner: Runner | None = None, experiment: str = "train") -> dict:
    """K seeds of one model under one parent run; the ensemble is scored as one classifier (members' mean)."""
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"ensemble seeds must be distinct and non-empty, got {seeds}")
    out_dir = Path(out_dir)
    with tracked_run(experiment, name=f"{base.model}-ensemble", params=params,
                     tags={"model_type": f"{base.model}-ensemble", "ensemble_size": len(seeds),
                           "seeds": ",".join(map(str, seeds))}) as parent:
        with atomic_dir(out_dir) as tmp:
            members = [fit(base.with_(seed=s), params, tmp / f"seed_{s}", runner=runner, experiment=experiment,
                           parent_run_id=parent.run_id, extra_tags={"ensemble_parent": parent.run_id})
                       for s in seeds]
            names = [f"seed_{s}" for s in seeds]
            ensemble = models.Ensemble(members_=[m.classifier for m in members], names=names)
            ens = score_splits(ensemble, Store(base.store))
            per_member = {k: [m.metrics[k] for m in members] for k in ("val_f1_macro", "test_f1_macro")}
            summary = {
                "model": base.model, "seeds": list(seeds), "parent_run_id": parent.run_id,
                "members": {n: m.run_id for n, m in zip(names, members)},
                "ensemble": for_file(ens),
                "members_mean": {k: round(float(np.mean(v)), 6) for k, v in per_member.items()},
                "members_std": {k: round(float(np.std(v)), 6) for k, v in per_member.items()},
            }
            models.save_ensemble_summary(tmp, summary)
        parent.log_metrics(ens, prefix="ensemble_")
        parent.log_metrics(summary["members_mean"], prefix="members_mean_")
        parent.log_file(out_dir / models.ENSEMBLE_FILE)
    return summary


def spread_of(values: list[float]) -> dict:
    """mean, sample sd (n - 1; 0 for one value) and the values, rounded for DVC-tracked files."""
    v = np.asarray(values, dtype=np.float64)
    sd = float(v.std(ddof=1)) if len(v) > 1 else 0.0
    return {"mean": round(float(v.mean()), 6), "sd": round(sd, 6), "values": [round(float(x), 6) for x in v]}


def seed_spread(spec: TrainSpec | BaselineSpec, params: dict, first: FitResult, seeds: list[int], *,
                experiment: str = "train", runner: Runner | None = None) -> dict:
    """The same fit over ``seeds`` (``first`` is the one at ``spec.seed``, kept as the model): how much a single
    model's scores move with the seed. The other seeds run in this process and keep no folder; each is an MLflow
    run tagged ``role=seed_spread``. Written to ``seeds.json`` in ``first``'s folder when it has one."""
    if runner is None:
        threads = spec.cpus_per_worker if isinstance(spec, TrainSpec) else None
        runner = LocalRunner(threads=threads)
    results = {int(spec.seed): first}
    for s in seeds:
        if int(s) not in results:
            results[int(s)] = fit(spec.with_seed(s), params, runner=runner, experiment=experiment,
                                  run_name=f"{spec.model}-seed{s}", extra_tags={"role": "seed_spread",
                                                                                 "spread_of": first.run_id})
    summary = {"model": spec.model, "seeds": list(results),
               **{k: spread_of([r.metrics[k] for r in results.values()]) for k in ("val_f1_macro", "test_f1_macro")}}
    if first.out_dir is not None:
        (Path(first.out_dir) / models.SEEDS_FILE).write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return summary
