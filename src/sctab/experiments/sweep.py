"""Run an experiment's points through Ray Tune (a grid over the points), one MLflow run per point.

Points train in Ray Tune trials (the training loop in the trial's process, as for tuning), so a sweep spreads
over a Ray cluster when ``RAY_ADDRESS`` names one. A point whose settings already have a FINISHED run in the
experiment is not trained again; an interrupted sweep resumes from ``ray_results/<experiment>/`` with each
unfinished point continuing from its last epoch checkpoint.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from sctab.data.subsets import label_rows
from sctab.evaluate.organs import f1_by_organ
from sctab.evaluate.predict import predict_split
from sctab.evaluate.scores import score_probs
from sctab.experiments.points import Point, experiment_points
from sctab.params_schema import section
from sctab.tracking import (
    close_run,
    close_stale_runs,
    data_version,
    experiment_id,
    project_root,
    running_runs,
    tracked_run,
    tracking_uri,
)
from sctab.train import ray_console
from sctab.train.ray_train import ensure_ray, model_device_setting, trial_resources
from sctab.train.trial import TrialContext, fit_in_trial

STATE_FILE = "sctab_sweep.json"


class SweepError(RuntimeError):
    """A sweep cannot run or every point failed."""


def mlflow_experiment(name: str) -> str:
    """The make target's name: sweep-model-size, sweep-data-size, exp-augmentation, exp-organ."""
    return f"sweep-{name}" if name in ("model-size", "data-size") else f"exp-{name}"


@dataclass
class SweepContext:
    base: TrialContext           # the model comes from each point
    points: dict                 # key -> Point
    hashes: dict                 # key -> digest


def tissue_metrics(clf, store, spec, tissue: str, average_over: str = "truth") -> dict:
    """Test metrics on the cells of one tissue_general label (paper, Supp. Table 2: lung holdout cells).

    Macro F1 over the cell types of those cells' truth by default, as the published code scored a subset: a
    cross-organ model's non-lung prediction costs the true type recall but is not averaged in as a class."""
    y, p = predict_split(clf, store, "test")
    rows = label_rows(store, "test", "tissue_general", tissue)
    m = score_probs(y[rows], p[rows], store, average_over=average_over)
    return {f"tissue_test_{k}": v for k, v in m.items()}


ORGAN_PREFIX = "organ_f1."


def organ_metrics(clf, store, spec) -> dict:
    """Test macro F1 per organ system (paper Fig. 2c), averaged over the types in each system's truth."""
    y, p = predict_split(clf, store, "test")
    codes = store.read_obs("test", columns=("tissue_general",))["tissue_general"].to_numpy()
    tissue = np.asarray(store.lookup("tissue_general")["label"].astype(str).tolist(), dtype=object)[codes]
    organs = f1_by_organ(y, p.argmax(axis=1), tissue, store.child_matrix(), average_over="truth")
    out = {f"{ORGAN_PREFIX}{o}": v["f1_macro"] for o, v in organs.items()}
    out.update({f"organ_types.{o}": float(v["n_types"]) for o, v in organs.items()})
    return out


def point_metrics(point: Point) -> Callable | None:
    """What a point scores beyond val/test: one tissue's test cells, each organ system's, both or neither."""
    parts = []
    if point.eval_tissue:
        parts.append(partial(tissue_metrics, tissue=point.eval_tissue, average_over=point.eval_average_over))
    if point.eval_organs:
        parts.append(organ_metrics)
    if not parts:
        return None

    def extra(clf, store, spec):
        out = {}
        for part in parts:
            out.update(part(clf, store, spec))
        return out

    return extra


def run_point(config: dict, ctx: SweepContext) -> None:
    """Ray Tune function trainable: train one point, report its final scores."""
    import ray  # the trial's own process: Ray is there already
    from ray import tune

    ray_console.quiet_worker()
    point: Point = ctx.points[config["point"]]
    # where and which attempt: a trial retried after its node was lost shows up as a second run of the point
    tags = {"role": "point", "point_key": point.key, "point_hash": ctx.hashes[point.key],
            "ray_node_id": ray.get_runtime_context().get_node_id(), "trial_id": tune.get_context().get_trial_id(),
            "resumed": str(tune.get_checkpoint() is not None).lower(),
            **{f"label.{k}": str(v) for k, v in point.labels.items()},
            **({"tissue_f1_average_over": point.eval_average_over} if point.eval_tissue else {})}
    final = fit_in_trial(ctx.base, point.overrides, run_name=point.key, tags=tags, extra_eval=point_metrics(point),
                         model=point.model)
    tune.report({k: v for k, v in final.items() if isinstance(v, (int, float, str))} | {"final": True})


def run_experiment(name: str, params: dict, *, store: str | Path = "data/store",
                   augmentations: str | Path | None = "data/augment", storage: str | Path | None = None,
                   fresh: bool = False, max_concurrent: int | None = None, cpus_per_trial: int | None = None,
                   verbose: int = 1) -> pd.DataFrame:
    """Train the points of experiment ``name`` that have no finished run yet; return one row per point."""
    from mlflow.tracking import MlflowClient  # heavy: loaded when a sweep runs

    ray_console.prepare()  # before Ray's first import
    from ray import tune

    points = experiment_points(name, params)
    hashes = {p.key: p.digest(params) for p in points}
    exp_cfg = section(params, "experiments")
    conc = int(max_concurrent or exp_cfg.max_concurrent)
    # a trial lost with its node (or its process) is retried up to this many times, from its last checkpoint
    max_failures = exp_cfg.max_failures
    cpus = int(cpus_per_trial or exp_cfg.cpus_per_trial)
    root = project_root()
    storage = Path(storage or root / "ray_results").resolve()
    exp_name = mlflow_experiment(name)
    path = storage / exp_name
    uri = tracking_uri()
    client = MlflowClient(uri)
    exp = experiment_id(exp_name, uri)
    close_stale_runs(exp_name, data_version=data_version(), who=f"sweep {exp_name}", uri=uri)  # a killed sweep's
    if fresh and path.exists():
        shutil.rmtree(path)
    done = _finished(client, exp, set(hashes.values()), ignore=fresh)
    todo = [p for p in points if hashes[p.key] not in done]
    print(f"[{exp_name}] {len(points)} points: {len(points) - len(todo)} already finished, {len(todo)} to train",
          flush=True)
    by_key = {p.key: p for p in points}
    state_file = path / STATE_FILE
    old = json.loads(state_file.read_text()) if state_file.exists() else None
    # an interrupted grid whose points kept their settings resumes as it was: finished trials stay finished,
    # unfinished ones continue from their last epoch checkpoint
    resume = (bool(todo) and old is not None and tune.Tuner.can_restore(str(path))
              and all(k in by_key and hashes[k] == old["hashes"].get(k) for k in old["todo"]))
    phases = []
    if resume:
        phases.append(("resume", [by_key[k] for k in old["todo"]]))
        todo = [p for p in todo if p.key not in set(old["todo"])]
    if todo:
        phases.append(("new", todo))
    for mode, group in phases:
        _run_grid(mode, group, name, exp_name, exp, path, storage, params, hashes, store, augmentations, root,
                  uri, client, conc, cpus, verbose, max_failures)
    if phases:
        done = _finished(client, exp, set(hashes.values()))
    rows = []
    for p in points:
        run = done.get(hashes[p.key])
        row = {"point": p.key, "model": p.model, **p.labels, "status": "finished" if run else "failed",
               **({"tissue_f1_average_over": p.eval_average_over} if p.eval_tissue else {})}
        if run is not None:
            row["mlflow_run_id"] = run.info.run_id
            row.update({k[len("final_"):]: v for k, v in run.data.metrics.items() if k.startswith("final_")})
        rows.append(row)
    table = pd.DataFrame(rows)
    if (table["status"] == "finished").sum() == 0:
        raise SweepError(f"no point of {exp_name} finished; see the FAILED runs in MLflow experiment {exp_name}")
    return table


def _finished(client, exp: str, wanted: set, ignore: bool = False) -> dict:
    """point hash -> its latest FINISHED run in the experiment."""
    if ignore:
        return {}
    out = {}
    for r in client.search_runs([exp], filter_string="tags.role = 'point' and attributes.status = 'FINISHED'",
                                max_results=10000, order_by=["attributes.start_time ASC"]):
        h = r.data.tags.get("point_hash")
        if h in wanted:
            out[h] = r
    return out


def _close_lost_attempts(client, exp: str, parent_id: str) -> None:
    """Runs of attempts that died with their node or process stay RUNNING: once the grid is over, mark them."""
    for r in running_runs(client, [exp], f"tags.`mlflow.parentRunId` = '{parent_id}'"):
        close_run(client, r.info.run_id, "FAILED", "attempt lost (its Ray node or trial process died); Tune retried it")


def _run_grid(mode, group, name, exp_name, exp, path, storage, params, hashes, store, augmentations, root, uri,
              client, conc, cpus, verbose, max_failures=2) -> None:
    """One Ray Tune grid over ``group``'s points, under one parent run (``mode``: new, or resume the saved one)."""
    from ray import tune

    resume_id = json.loads((path / "parent.json").read_text())["parent_run_id"] if mode == "resume" else None
    if mode == "resume":
        print(f"[{exp_name}] resuming the interrupted sweep in {path}", flush=True)
    else:
        if path.exists():
            shutil.rmtree(path)
        path.mkdir(parents=True)
    with tracked_run(exp_name, name=f"{exp_name} {time.strftime('%Y-%m-%d %H:%M')}", params=params,
                     tags={"role": "sweep", "experiment_name": name}, resume=resume_id, uri=uri) as parent:
        parent_id = parent.run_id
        if mode != "resume":
            (path / "parent.json").write_text(json.dumps({"parent_run_id": parent_id}))
            (path / STATE_FILE).write_text(json.dumps({"todo": sorted(p.key for p in group), "hashes": hashes}))
        base = TrialContext(model="", params=params, store=str(Path(store).resolve()), pca_dir=None,
                            augmentations=str(Path(augmentations).resolve()) if augmentations else None,
                            experiment=exp_name, parent_run_id=parent_id, tracking_uri=uri, root=str(root),
                            report_every=1, threads=cpus, study=exp_name)
        ctx = SweepContext(base=base, points={p.key: p for p in group}, hashes=hashes)
        try:
            device = model_device_setting(params, group[0].model)  # the points are neural: train.device
            resources = trial_resources(section(params, "experiments.gpus_per_trial"), device,
                                        cpus, conc, ensure_ray(), "experiments")
            parent.set_tags(trial_resources=json.dumps(resources))
            trainable = tune.with_resources(tune.with_parameters(run_point, ctx=ctx), resources)
            if mode == "resume":
                tuner = tune.Tuner.restore(str(path), trainable=trainable, resume_unfinished=True,
                                           resume_errored=True)
            else:
                tuner = tune.Tuner(trainable, param_space={"point": tune.grid_search([p.key for p in group])},
                                   tune_config=tune.TuneConfig(max_concurrent_trials=conc),
                                   run_config=tune.RunConfig(
                                       name=exp_name, storage_path=str(storage), verbose=verbose,
                                       failure_config=tune.FailureConfig(max_failures=max_failures)))
            grid = tuner.fit()
            if grid.num_terminated + grid.num_errors < len(group):
                raise KeyboardInterrupt(f"sweep {exp_name} was interrupted; run it again to resume")
        except BaseException:
            for r in running_runs(client, [exp], f"tags.`mlflow.parentRunId` = '{parent_id}'"):
                close_run(client, r.info.run_id, "KILLED")
            raise
        for res in grid:
            if res.error is not None:
                print(f"[{exp_name}] point {(res.config or {}).get('point')} failed: "
                      f"{str(res.error).splitlines()[0][:300]}", flush=True)
        _close_lost_attempts(client, exp, parent_id)
