"""Where a fit's training happens: Ray Train, a Ray Tune trial's own process, or this process.

A runner trains what a spec describes and hands back the trained classifier with what the training itself
measured; everything after the loop (scoring, the model folder, final metrics) is the same for all of them
and lives in :mod:`sctab.train.fitting`. The neural kinds run the shared loop (:func:`sctab.train.loop.run_training`)
through a session: Ray Train's workers (:mod:`sctab.train.ray_train`), or an in-process one here. The baselines
fit in the calling process, except XGBoost under :class:`RayTrainRunner` (the train stage): data-parallel on Ray
Train's XGBoost workers (:mod:`sctab.train.ray_xgboost`).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from sctab.data.store import Store
from sctab.models import Classifier, FeatureSpace, TorchClassifier, build_model
from sctab.models.device import resolve_device
from sctab.tracking import TrackedRun, project_root
from sctab.train.baselines import baseline_device, train_baseline
from sctab.train.loop import BEST_FILE, EpochLogger, load_checkpoint_dir, run_training
from sctab.train.ray_train import restore_best, run_on_ray
from sctab.train.spec import BaselineSpec, TrainSpec

__all__ = ["Trained", "Runner", "LocalRunner", "TuneTrialRunner", "RayTrainRunner", "METRIC"]

METRIC = "val_f1_macro"  # the objective every study and selection uses


@dataclass
class Trained:
    """A runner's result: the classifier, what training measured (best epoch, rounds, cells/s...), epochs."""

    classifier: Classifier
    info: dict = field(default_factory=dict)
    history: list[dict] | None = None


def torch_classifier(spec: TrainSpec, weights: dict) -> TorchClassifier:
    """The network of ``spec`` with ``weights``, as a classifier over the store's genes and classes, placed
    where this process scores it: the GPU when there is one here (unless the spec says cpu). Ray Train's
    workers may have had GPUs this process lacks, so ``cuda`` asked of training is ``auto`` here."""
    store = Store(spec.store)
    module = build_model(spec.model, store.n_genes, store.n_classes, **spec.arch)
    module.load_state_dict(weights)
    clf = TorchClassifier(kind=spec.model, module=module.eval(), space=FeatureSpace.of(store),
                          config=dict(spec.arch), batch_size=spec.eval_batch_size)
    return clf.to("cpu" if spec.device == "cpu" else "auto")


def _neural_info(clf: TorchClassifier, **info) -> dict:
    return {**info, "n_params": int(sum(p.numel() for p in clf.module.parameters()))}


def log_worker_memory(run: TrackedRun, info: dict) -> None:
    """Each worker's peak RSS as the MLflow metric ``worker_peak_rss_mib`` at step = rank (a bench reads it)."""
    for rank, mib in enumerate(info.get("worker_peak_rss_mib") or []):
        run.log_metrics({"worker_peak_rss_mib": mib}, step=rank)


class InProcessSession:
    """The training loop's view of this process: rank 0 of 1, keeps the best weights, reports to nobody."""

    rank, world_size = 0, 1

    def __init__(self, device: torch.device | str = "cpu"):
        self.device = resolve_device(device)
        self.best_weights = None
        self.last: dict = {}  # the latest epoch's metrics

    def load_state(self):
        return None

    def wrap(self, model):
        return model

    def all_reduce(self, t):
        return t

    def report(self, metrics, checkpoint_dir):
        self.last = dict(metrics)
        if checkpoint_dir is not None:
            self.best_weights = torch.load(Path(checkpoint_dir) / BEST_FILE, map_location="cpu", weights_only=True)


class TuneSession(InProcessSession):
    """A Ray Tune trial: per-epoch reports with checkpoints (ASHA can stop it), resumes from the last one."""

    def load_state(self):
        from ray import tune  # Ray is imported only where a trial runs

        ckpt = tune.get_checkpoint()
        if ckpt is None:
            return None
        with ckpt.as_directory() as d:
            state, best = load_checkpoint_dir(d)
        self.best_weights = best
        return state, best

    def report(self, metrics, checkpoint_dir):
        from ray import tune

        super().report(metrics, checkpoint_dir)
        ckpt = tune.Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir is not None else None
        tune.report({METRIC: metrics["val_f1_macro"], "val_loss": metrics["val_loss"], "step": metrics["epoch"]},
                    checkpoint=ckpt)


class Runner:
    """Trains in this process: the neural loop with an in-process session, the baselines as they are."""

    session_class = InProcessSession

    def __init__(self, threads: int | None = None):
        self.threads = threads

    def step_report(self, step: int, metrics: dict) -> None:
        """Intermediate validation scores of a baseline (nobody listens outside Tune)."""

    def train(self, spec: TrainSpec | BaselineSpec, run: TrackedRun) -> Trained:
        before = torch.get_num_threads()
        if self.threads:
            torch.set_num_threads(max(1, int(self.threads)))
        try:
            if isinstance(spec, BaselineSpec):
                if self.threads and spec.threads is None:
                    spec = spec.with_(threads=int(self.threads))
                return self.train_baseline(spec, run)
            return self.train_neural(spec, run)
        finally:
            torch.set_num_threads(before)

    def train_baseline(self, spec: BaselineSpec, run: TrackedRun) -> Trained:
        """A baseline in this process (XGBoost as rank 0 of 1), its intermediate scores logged and reported."""

        def on_step(step: int, m: dict) -> None:
            run.log_metrics(m, step=step)
            self.step_report(step, m)

        run.set_tags(worker_device=baseline_device(spec))  # before: a trial ASHA stops has it too
        clf, info = train_baseline(spec, on_step=on_step)
        log_worker_memory(run, info)
        return Trained(clf, info)

    def train_neural(self, spec: TrainSpec, run: TrackedRun) -> Trained:
        session = self.session_class(spec.device)  # in a Tune trial: the GPU share Ray gave it, if any
        run.set_tags(worker_device=str(session.device), precision=spec.precision)
        t0 = time.perf_counter()
        final = run_training(spec, session, EpochLogger(log_epoch=run.log_epoch))
        history = final.get("history") or []
        info = {"best_epoch": int(session.last.get("best_epoch", -1)),
                "epochs_run": int(session.last.get("epoch", -1)) + 1,
                "train_seconds": time.perf_counter() - t0}
        if history:
            info["train_cells_per_s"] = statistics.median(h["train_cells_per_s"] for h in history)
        clf = torch_classifier(spec, session.best_weights)
        return Trained(clf, _neural_info(clf, **info), history)


class LocalRunner(Runner):
    """This process, no Ray: quick local runs, tests, reference runs of a study."""


class TuneTrialRunner(Runner):
    """Inside a Ray Tune trial: every epoch (or every few XGBoost rounds) reported to Tune."""

    session_class = TuneSession

    def step_report(self, step: int, metrics: dict) -> None:
        from ray import tune

        tune.report({METRIC: metrics["val_f1_macro"], "val_loss": metrics["val_loss"], "step": step})


class RayTrainRunner(Runner):
    """The neural kinds on Ray Train's DDP workers, XGBoost data-parallel on Ray Train's XGBoost workers (local
    Ray, or the cluster at RAY_ADDRESS); CellTypist in this process."""

    def train_baseline(self, spec: BaselineSpec, run: TrackedRun) -> Trained:
        if spec.model != "xgboost":
            return super().train_baseline(spec, run)
        from sctab.train.ray_xgboost import train_xgboost_on_ray

        clf, info = train_xgboost_on_ray(spec, name=f"xgboost-s{spec.seed}-{run.run_id[:8]}",
                                         storage_path=project_root() / "ray_results")
        run.set_tags(worker_device=info.pop("worker_device"), worker_nodes=",".join(info.pop("worker_nodes")))
        log_worker_memory(run, info)
        return Trained(clf, info)

    def train_neural(self, spec: TrainSpec, run: TrackedRun) -> Trained:
        t0 = time.perf_counter()
        result = run_on_ray(spec, name=f"{spec.model}-s{spec.seed}-{run.run_id[:8]}",
                            storage_path=project_root() / "ray_results", run_id=run.run_id, tracking_uri=run.uri)
        state, best_weights = restore_best(result)
        history = state["history"]
        info = {"best_epoch": int(state["best"]["epoch"]), "epochs_run": len(history),
                "train_cells_per_s": statistics.median(h["train_cells_per_s"] for h in history),
                "train_seconds": time.perf_counter() - t0}
        clf = torch_classifier(spec, best_weights)
        return Trained(clf, _neural_info(clf, **info), history)
