"""Train one model end to end: an MLflow run, Ray Train, the best checkpoint as a model folder.

One MLflow run per trained model: every setting as a param; per-epoch train/val loss, val macro F1,
learning rate and cells/s as metrics (logged by rank 0 while training); the model folder as artifacts;
lineage tags (git commit, profile, data version, seed, model type). Deep-ensemble members carry their
parent run's id.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sctab.data.store import Store
from sctab.evaluate.metrics import f1_from_confusion, confusion, correct_predictions
from sctab.tracking.runs import experiment_id, flatten, lineage_tags, project_root, tracking_uri
from sctab.train.artifacts import save_model_folder
from sctab.train.spec import TrainSpec


@dataclass
class FitResult:
    run_id: str
    out_dir: Path
    metrics: dict


def split_metrics(model: torch.nn.Module, store: Store, split: str, batch_size: int = 4096) -> dict:
    """Ontology-corrected macro F1, class-weighted cross entropy and accuracy of one model on a split."""
    from sctab.evaluate.predict import predict_split

    y, p = predict_split(model, store, split, batch_size=batch_size)
    return metrics_from_probs(y, p, store)


def metrics_from_probs(y: np.ndarray, p: np.ndarray, store: Store) -> dict:
    """Metrics of class probabilities ``p`` against codes ``y`` (prediction = argmax, ontology-corrected)."""
    pred = correct_predictions(y, p.argmax(axis=1), store.child_matrix())
    f1, _, _ = f1_from_confusion(confusion(y, pred, store.n_classes), average_over="union")
    w = store.class_weights()
    nll = -np.log(np.clip(p[np.arange(len(y)), y], 1e-12, None))
    return {"f1_macro": f1, "accuracy": float((pred == y).mean()) if len(y) else float("nan"),
            "loss": float((w[y] * nll).sum() / w[y].sum()) if len(y) else float("nan"), "rows": int(len(y))}


def fit(spec: TrainSpec, params: dict, out_dir: str | Path, *, experiment: str = "train",
        run_name: str | None = None, parent_run_id: str | None = None, extra_tags: dict | None = None,
        evaluate_test: bool = True) -> FitResult:
    """Train ``spec`` with Ray Train, tracked in MLflow; write the best model to ``out_dir``."""
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient

    from sctab.train.ray_train import restore_best, run_on_ray

    uri = tracking_uri()
    client = MlflowClient(uri)
    exp = experiment_id(experiment, uri)
    tags = lineage_tags(params, seed=spec.seed, model_type=spec.model, **(extra_tags or {}))
    if parent_run_id:
        tags["mlflow.parentRunId"] = parent_run_id
    run = client.create_run(exp, run_name=run_name or f"{spec.model}-seed{spec.seed}",
                            tags=tags)
    run_id = run.info.run_id
    client.log_batch(run_id, params=[Param(k, v) for k, v in flatten(spec.to_dict()).items()])
    t0 = time.perf_counter()
    try:
        result = run_on_ray(spec, name=f"{spec.model}-s{spec.seed}-{run_id[:8]}",
                            storage_path=project_root() / "ray_results", run_id=run_id, tracking_uri=uri)
        state, best_weights = restore_best(result)
        train_seconds = time.perf_counter() - t0
        store = Store(spec.store)
        from sctab.models import build_model

        model = build_model(spec.model, store.n_genes, store.n_classes, **spec.arch)
        model.load_state_dict(best_weights)
        history = state["history"]
        metrics = {
            "best_epoch": int(state["best"]["epoch"]), "epochs_run": len(history),
            "val_f1_macro": float(state["best"]["f1"]), "val_loss": float(state["best"]["loss"]),
            "train_cells_per_s": statistics.median(h["train_cells_per_s"] for h in history),
            "train_seconds": train_seconds,
        }
        if evaluate_test:
            test = split_metrics(model, store, "test", spec.eval_batch_size)
            metrics.update({f"test_{k}": v for k, v in test.items() if k != "rows"})
        meta = {"run_id": run_id, "seed": spec.seed, "training": {k: v for k, v in spec.to_dict().items()
                                                                  if k not in ("arch", "store", "augmentations")},
                **{k: tags[k] for k in ("git_commit", "profile", "data_version")}}
        out = save_model_folder(out_dir, model_name=spec.model, arch=spec.arch, state_dict=best_weights, store=store,
                                meta=meta, metrics=_rounded(metrics, for_file=True), history=history)
        ts = int(time.time() * 1000)
        client.log_batch(run_id, metrics=[Metric(f"final_{k}", float(v), ts, 0) for k, v in metrics.items()],
                         tags=[RunTag("best_epoch", str(metrics["best_epoch"]))])
        client.log_artifacts(run_id, str(out), artifact_path="model")
        client.set_terminated(run_id, "FINISHED")
        return FitResult(run_id=run_id, out_dir=out, metrics=metrics)
    except BaseException as e:
        mark_terminated(client, run_id, "KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED")
        raise


def mark_terminated(client, run_id: str, status: str) -> None:
    """Best effort: when the tracking server is the thing that failed, the original error must surface, not a
    second one from marking the run (the server shows such a run as RUNNING until someone closes it)."""
    try:
        client.set_terminated(run_id, status)
    except Exception as e:  # noqa: BLE001 - reported, then the caller re-raises the original error
        import sys

        print(f"warning: could not mark MLflow run {run_id} {status}: {str(e).splitlines()[0][:200]}",
              file=sys.stderr)


def _rounded(metrics: dict, for_file: bool) -> dict:
    """Metrics for files DVC tracks: timings drop out so re-runs compare on what matters."""
    skip = {"train_seconds", "train_cells_per_s"} if for_file else set()
    return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in metrics.items() if k not in skip}


def fit_ensemble(base: TrainSpec, params: dict, seeds: list[int], out_dir: str | Path, *,
                 experiment: str = "train") -> dict:
    """K seeds of one model under one parent run; ensemble metrics use the members' mean softmax."""
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    from sctab.io import atomic_dir
    from sctab.train.artifacts import load_model_folder

    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"ensemble seeds must be distinct and non-empty, got {seeds}")
    uri = tracking_uri()
    client = MlflowClient(uri)
    parent = client.create_run(experiment_id(experiment, uri), run_name=f"{base.model}-ensemble",
                               tags=lineage_tags(params, model_type=f"{base.model}-ensemble",
                                                 ensemble_size=len(seeds), seeds=",".join(map(str, seeds))))
    pid = parent.info.run_id
    out_dir = Path(out_dir)
    try:
        with atomic_dir(out_dir) as tmp:
            members = []
            for s in seeds:
                r = fit(base.with_(seed=s), params, tmp / f"seed_{s}", experiment=experiment, parent_run_id=pid,
                        extra_tags={"ensemble_parent": pid})
                members.append(r)
            store = Store(base.store)
            ens = ensemble_metrics([load_model_folder(r.out_dir).model for r in members], store,
                                   base.eval_batch_size)
            per_member = {k: [r.metrics[k] for r in members] for k in ("val_f1_macro", "test_f1_macro")}
            summary = {
                "model": base.model, "seeds": list(seeds), "parent_run_id": pid,
                "members": {f"seed_{s}": r.run_id for s, r in zip(seeds, members)},
                "ensemble": _rounded(ens, True),
                "members_mean": {k: round(float(np.mean(v)), 6) for k, v in per_member.items()},
                "members_std": {k: round(float(np.std(v)), 6) for k, v in per_member.items()},
            }
            (tmp / "ensemble.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
        ts = int(time.time() * 1000)
        client.log_batch(pid, metrics=[Metric(f"ensemble_{k}", float(v), ts, 0) for k, v in ens.items()]
                         + [Metric(f"members_mean_{k}", float(v), ts, 0) for k, v in summary["members_mean"].items()])
        client.log_artifact(pid, str(out_dir / "ensemble.json"))
        client.set_terminated(pid, "FINISHED")
    except BaseException:
        mark_terminated(client, pid, "FAILED")
        raise
    return summary


def ensemble_metrics(models: list[torch.nn.Module], store: Store, batch_size: int = 4096) -> dict:
    """Val and test metrics of a deep ensemble: the mean of its members' softmax."""
    from sctab.evaluate.predict import predict_split

    out = {}
    for split in ("val", "test"):
        mean = None
        for model in models:
            y, p = predict_split(model, store, split, batch_size=batch_size)
            mean = p / len(models) if mean is None else mean + p / len(models)
        out.update({f"{split}_{k}": v for k, v in metrics_from_probs(y, mean, store).items() if k != "rows"})
    return out
