"""Training a neural model inside one process that Ray Tune runs (a tuning trial, a sweep point).

The training loop of Ray Train (sctab.train.loop) runs here without a trainer nested in the trial: a session
that reports each epoch (and its checkpoint) to Tune, so ASHA can stop a trial and an interrupted trial resumes
from its last epoch; the best weights are scored on val and test and everything goes to one MLflow run.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

METRIC = "val_f1_macro"


class InProcessError(RuntimeError):
    """A trial's result cannot be used (a NaN objective)."""


@dataclass
class TrialContext:
    """Everything a trial needs, as plain data (shipped to the Ray workers)."""
    model: str
    params: dict
    store: str
    pca_dir: str | None
    augmentations: str | None
    experiment: str
    parent_run_id: str
    tracking_uri: str
    root: str
    report_every: int
    threads: int
    study: str


class TuneSession:
    """The training loop's view of a Tune trial: one process, per-epoch reports with checkpoints."""
    rank, world_size = 0, 1

    def __init__(self):
        import torch

        self.device = torch.device("cpu")
        self.best_weights = None
        self.last: dict = {}  # the latest epoch's metrics

    def load_state(self):
        from ray import tune

        from sctab.train.loop import load_checkpoint_dir

        ckpt = tune.get_checkpoint()
        if ckpt is None:
            return None
        with ckpt.as_directory() as d:
            state, best = load_checkpoint_dir(d)
        self.best_weights = best
        return state, best

    def wrap(self, model):
        return model

    def all_reduce(self, t):
        return t

    def report(self, metrics, checkpoint_dir):
        import torch
        from ray import tune

        from sctab.train.loop import BEST_FILE

        self.last = dict(metrics)
        ckpt = None
        if checkpoint_dir is not None:
            self.best_weights = torch.load(Path(checkpoint_dir) / BEST_FILE, map_location="cpu", weights_only=True)
            ckpt = tune.Checkpoint.from_directory(str(checkpoint_dir))
        tune.report({METRIC: metrics["val_f1_macro"], "val_loss": metrics["val_loss"], "step": metrics["epoch"]},
                    checkpoint=ckpt)


class BestWeightsSession(TuneSession):
    """The same loop outside Tune (reference runs): keeps the best weights, reports to nobody."""

    def load_state(self):
        return None

    def report(self, metrics, checkpoint_dir):
        import torch

        from sctab.train.loop import BEST_FILE

        self.last = dict(metrics)
        if checkpoint_dir is not None:
            self.best_weights = torch.load(Path(checkpoint_dir) / BEST_FILE, map_location="cpu", weights_only=True)


def fit_in_process(config: dict, ctx: TrialContext, tags: dict, run_name: str, session, extra_eval=None) -> dict:
    """Linear / MLP / scTab in this process (the loop Ray Train runs, without a trainer nested in the trial).

    ``extra_eval(model, store, spec) -> dict`` adds metrics of the best model (e.g. on one tissue's test cells).
    """
    import torch
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    from sctab.data.store import Store
    from sctab.models import build_model
    from sctab.tracking.runs import experiment_id, flatten, lineage_tags
    from sctab.train.fit import split_metrics
    from sctab.train.loop import EpochLogger, run_training
    from sctab.train.spec import spec_from_params

    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, ctx.threads))
    client = MlflowClient(ctx.tracking_uri)
    run = client.create_run(experiment_id(ctx.experiment, ctx.tracking_uri), run_name=run_name,
                            tags={**lineage_tags(ctx.params, model_type=ctx.model, **tags),
                                  "mlflow.parentRunId": ctx.parent_run_id})
    run_id = run.info.run_id
    client.log_batch(run_id, params=[Param(k, str(v)) for k, v in flatten(config).items()])
    try:
        spec = spec_from_params(ctx.params, ctx.model, store=ctx.store, augmentations=ctx.augmentations,
                                num_workers=1, cpus_per_worker=ctx.threads, use_gpu=False, **config)

        def log_epoch(m: dict, epoch: int) -> None:
            ts = int(time.time() * 1000)
            client.log_batch(run_id, metrics=[Metric(k, float(v), ts, epoch) for k, v in m.items()
                                              if isinstance(v, (int, float)) and k != "epoch"])

        run_training(spec, session, EpochLogger(log_epoch=log_epoch))
        store = Store(spec.store)
        model = build_model(spec.model, store.n_genes, store.n_classes, **spec.arch)
        model.load_state_dict(session.best_weights)
        val = split_metrics(model, store, "val", spec.eval_batch_size)
        test = split_metrics(model, store, "test", spec.eval_batch_size)
        metrics = {**{f"val_{k}": v for k, v in val.items() if k != "rows"},
                   **{f"test_{k}": v for k, v in test.items() if k != "rows"},
                   "n_params": int(sum(p.numel() for p in model.parameters())),
                   "best_epoch": int(session.last.get("best_epoch", -1)),
                   "epochs_run": int(session.last.get("epoch", -1)) + 1}
        if extra_eval is not None:
            metrics.update(extra_eval(model, store, spec))
        if not math.isfinite(metrics["val_f1_macro"]):
            raise InProcessError(f"objective val_f1_macro is {metrics['val_f1_macro']}")
        ts = int(time.time() * 1000)
        client.log_batch(run_id, metrics=[Metric(f"final_{k}", float(v), ts, 0) for k, v in metrics.items()])
        client.set_terminated(run_id, "FINISHED")
        return {**metrics, "mlflow_run_id": run_id}
    except BaseException as e:
        stopped = isinstance(e, (KeyboardInterrupt, SystemExit))  # SystemExit: Tune stopping the trial early
        if not stopped:
            client.set_tag(run_id, "error", f"{type(e).__name__}: {e}"[:5000])
        client.set_terminated(run_id, "KILLED" if stopped else "FAILED")
        raise
    finally:
        torch.set_num_threads(threads)


def plain(v):
    """numpy scalars from the searcher as plain Python (YAML, MLflow and the model checks want those)."""
    if isinstance(v, np.generic):
        return v.item()
    return v
