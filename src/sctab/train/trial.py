"""One fit inside a Ray Tune trial (a tuning trial, a sweep point), through the one training entry.

The trial's process runs the fit itself (no Ray Train nested in the trial): per-epoch (or per-round) reports
reach Tune, so ASHA can stop a trial and an interrupted trial resumes from its last epoch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

import numpy as np

from sctab.models import is_neural
from sctab.train.fitting import fit
from sctab.train.runners import Runner, TuneTrialRunner
from sctab.train.spec import make_spec

__all__ = ["TrialContext", "fit_in_trial", "plain"]


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


def plain(v):
    """numpy scalars from the searcher as plain Python (YAML, MLflow and the model checks want those)."""
    if isinstance(v, np.generic):
        return v.item()
    return v


def fit_in_trial(ctx: TrialContext, overrides: dict, *, run_name: str, tags: dict, runner: Runner | None = None,
                 extra_eval: Callable | None = None, model: str | None = None) -> dict:
    """Fit ``model`` (default: the context's) with ``overrides`` under the study's parent run; its final scores
    and the run id. The runner defaults to a Tune trial's, with the trial's threads."""
    model = model or ctx.model
    os.chdir(ctx.root)  # trials may start elsewhere; paths and lineage resolve from the project
    os.environ["MLFLOW_TRACKING_URI"] = ctx.tracking_uri
    runner = runner or TuneTrialRunner(threads=ctx.threads)
    settings = ({"num_workers": 1, "cpus_per_worker": max(1, int(runner.threads or 1)), "use_gpu": False}
                if is_neural(model) else {"report_every": ctx.report_every})
    spec = make_spec(ctx.params, model, store=ctx.store, augmentations=ctx.augmentations, pca_dir=ctx.pca_dir,
                     overrides={k: plain(v) for k, v in overrides.items()}, **settings)
    r = fit(spec, ctx.params, runner=runner, experiment=ctx.experiment, run_name=run_name,
            parent_run_id=ctx.parent_run_id, extra_tags=tags, extra_eval=extra_eval)
    return {**r.metrics, "mlflow_run_id": r.run_id}
