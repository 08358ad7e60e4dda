"""Ray Tune + Optuna studies: the paper's "well-tuned reference models" (Supp. Table 4, default vs tuned).

One study per model: ``tune.Tuner`` with ``OptunaSearch`` (TPE) over conf/tune/<model>.yaml, an ASHA scheduler
for models that report as they go (XGBoost every ``report_every`` rounds, linear/MLP every epoch), the
validation ontology-corrected macro F1 as objective. MLflow (experiment ``tune-<model>``): one parent run per
study holding the best config and the comparison; every trial a nested run (failed ones marked FAILED with
the error, ones ASHA stopped marked KILLED), plus two nested reference runs: the library's default settings
and the current params.yaml settings. The study lives in ``ray_results/tune-<model>`` and resumes from there
after an interruption without repeating finished trials.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path

from sctab.models import SEEDS_FILE, is_neural
from sctab.params_schema import TuneParams, as_dict, section
from sctab.tracking import (
    close_run,
    close_stale_runs,
    data_version,
    experiment_id,
    project_root,
    record_failure,
    running_runs,
    tracked_run,
    tracking_uri,
)
from sctab.tracking.runs import flatten
from sctab.train import ray_console
from sctab.train.ray_train import ensure_ray, model_device_setting, trial_resources
from sctab.train.runners import METRIC, LocalRunner
from sctab.train.search_space import SearchSpace, check_against_model, load_search_space
from sctab.train.trial import TrialContext, fit_in_trial, plain

MODE = "max"
STUDY_FILE = "sctab_study.json"
STEPPED = {"xgboost", "linear", "mlp", "sctab"}   # report intermediate scores: ASHA can stop them early


class StudyError(RuntimeError):
    """A study cannot run or finish (no trial succeeded, a broken resume state)."""


# ------------------------------------------------------------------------------------------------ trials
def run_trial(config: dict, ctx: TrialContext) -> None:
    """Ray Tune function trainable: train one config, report as it goes, end with val and test scores."""
    from ray import tune

    ray_console.quiet_worker()
    trial_id = tune.get_context().get_trial_id()
    final = fit_in_trial(ctx, config, run_name=f"trial {trial_id}",
                         tags={"ray_trial_id": trial_id, "study": ctx.study, "role": "trial"})
    tune.report({METRIC: final["val_f1_macro"], "val_loss": final["val_loss"],
                 "test_f1_macro": final["test_f1_macro"], "test_loss": final["test_loss"],
                 "mlflow_run_id": final["mlflow_run_id"], "final": True})


# ------------------------------------------------------------------------------------------------ studies
def study_name(model: str) -> str:
    return f"tune-{model}"


def run_study(model: str, params: dict, *, store: str | Path = "data/store", pca_dir: str | Path | None = "data/pca",
              augmentations: str | Path | None = "data/augment", storage: str | Path | None = None,
              space: SearchSpace | None = None, fresh: bool = False, num_samples: int | None = None,
              max_concurrent: int | None = None, cpus_per_trial: int | None = None, reference_runs: bool = True,
              verbose: int = 1, time_budget_s: float | None = None) -> dict:
    """Run (or resume) the study of ``model``; return its summary (best config, default vs tuned).

    ``time_budget_s``: no trial starts after this many seconds and running ones are stopped (Ray Tune's budget;
    the best trial so far wins); a new study only."""
    from mlflow.tracking import MlflowClient  # heavy, optional at import: loaded when a study runs

    ray_console.prepare()  # before Ray's first import
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    tcfg = section(params, "tune")
    space = space or load_search_space(model)
    check_against_model(space, params)
    n = int(num_samples if num_samples is not None else tcfg.samples_for(model))
    conc = int(max_concurrent if max_concurrent is not None else tcfg.max_concurrent)
    cpus = int(cpus_per_trial if cpus_per_trial is not None else tcfg.cpus_per_trial)
    if n < 1 or conc < 1 or cpus < 1:
        raise StudyError(f"num_samples, max_concurrent and cpus_per_trial must be >= 1 (got {n}, {conc}, {cpus})")
    root = project_root()
    storage = Path(storage or root / "ray_results").resolve()
    name = study_name(model)
    path = storage / name
    if fresh and path.exists():
        shutil.rmtree(path)
    uri = tracking_uri()
    client = MlflowClient(uri)
    exp = experiment_id(name, uri)
    state_file = path / STUDY_FILE
    state = json.loads(state_file.read_text()) if state_file.exists() else None
    if state is not None and state.get("model") != model:
        raise StudyError(f"{path} holds a study of {state.get('model')!r}, not {model!r}; use --fresh")
    resuming = state is not None and tune.Tuner.can_restore(str(path))
    if state is None and path.exists():
        shutil.rmtree(path)  # a study that never saved its state cannot be resumed: start it over
    close_stale_runs(name, data_version=data_version(), who=f"study {name}", uri=uri)  # a killed study's runs
    with tracked_run(name, name=f"{name} {time.strftime('%Y-%m-%d %H:%M')}", params=params,
                     tags={"model_type": model, "study": name, "role": "study", "search_space": str(space.path)},
                     resume=state["parent_run_id"] if state is not None else None, uri=uri) as parent:
        if state is None:
            state = {"model": model, "parent_run_id": parent.run_id, "num_samples": n,
                     "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "space": space.space}
            path.mkdir(parents=True, exist_ok=True)
            state_file.write_text(json.dumps(state, indent=2) + "\n")
        else:
            print(f"resuming study {name} ({path}); MLflow parent run {state['parent_run_id']}", flush=True)
            if state.get("space") != space.space:
                raise StudyError(f"the search space changed since study {name} started ({space.path}); "
                                 f"use --fresh to start a new study")
            n = int(state.get("num_samples", n))
        pid = parent.run_id
        _log_study_params(client, pid, model, space, n, conc, cpus, tcfg)

        report_every = tcfg.report_every
        ctx = TrialContext(model=model, params=params, store=str(Path(store).resolve()),
                           pca_dir=str(Path(pca_dir).resolve()) if pca_dir else None,
                           augmentations=str(Path(augmentations).resolve()) if augmentations else None,
                           experiment=name, parent_run_id=pid, tracking_uri=uri, root=str(root),
                           report_every=report_every, threads=cpus, study=name)
        t0 = time.perf_counter()
        try:
            references = _reference_runs(model, params, space, ctx, client, pid) if reference_runs else {}
            resources = trial_resources(tcfg.gpus_per_trial, model_device_setting(params, model), cpus,
                                        conc, ensure_ray(), "tune")
            client.set_tag(pid, "trial_resources", json.dumps(resources))
            trainable = tune.with_resources(tune.with_parameters(run_trial, ctx=ctx), resources)
            if resuming:
                tuner = tune.Tuner.restore(str(path), trainable=trainable, resume_unfinished=True,
                                           resume_errored=False, restart_errored=False)
            else:
                tuner = tune.Tuner(
                    trainable, param_space=space.to_tune(),
                    tune_config=tune.TuneConfig(
                        metric=METRIC, mode=MODE, num_samples=n, max_concurrent_trials=conc,
                        search_alg=OptunaSearch(points_to_evaluate=space.points_to_evaluate or None,
                                                seed=tcfg.seed),
                        scheduler=_scheduler(model, params, tcfg, report_every),
                        time_budget_s=time_budget_s),
                    run_config=tune.RunConfig(name=name, storage_path=str(storage), verbose=verbose,
                                              failure_config=tune.FailureConfig(max_failures=0, fail_fast=False)))
            grid = tuner.fit()
            if grid.num_terminated + grid.num_errors < n and not time_budget_s:
                raise KeyboardInterrupt(f"study {name} was interrupted after {grid.num_terminated + grid.num_errors} "
                                        f"of {n} trials; run again to resume it")
        except BaseException:
            for r in running_runs(client, [exp], f"tags.`mlflow.parentRunId` = '{pid}'"):
                client.set_tag(r.info.run_id, "tune_status", "interrupted")
                close_run(client, r.info.run_id, "KILLED")
            raise
        trials = _reconcile(grid, client, exp, pid, name)
        summary = _summarise(model, space, trials, references, pid, n, time.perf_counter() - t0, path)
        _log_summary(client, pid, summary)
        return summary


def _scheduler(model: str, params: dict, tcfg: TuneParams, report_every: int):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if model not in STEPPED:
        return FIFOScheduler()
    m = section(params, f"models.{model}")
    if model == "xgboost":
        steps = math.ceil(m.n_estimators / report_every)
    else:
        steps = m.epochs or 10
    asha = tcfg.asha
    # a grace period past the last report means no early stopping at all
    return ASHAScheduler(time_attr="training_iteration", max_t=steps + 1,
                         grace_period=min(int(asha.get("grace_period", 1)), steps + 1),
                         reduction_factor=float(asha.get("reduction_factor", 2)))


def _log_study_params(client, pid, model, space, n, conc, cpus, tcfg) -> None:
    from mlflow.entities import Param

    existing = client.get_run(pid).data.params
    new = {"model": model, "num_samples": str(n), "max_concurrent": str(conc), "cpus_per_trial": str(cpus),
           "sampler": "optuna TPE", "seed": str(tcfg.seed),
           **{f"space.{k}": json.dumps(v) for k, v in space.space.items()}}
    todo = [Param(k, v) for k, v in new.items() if k not in existing]
    if todo:
        client.log_batch(pid, params=todo)


def _reference_runs(model, params, space, ctx: TrialContext, client, pid) -> dict:
    """The library-default and params.yaml settings, trained once each (reused when the study resumes)."""
    done = {r.data.tags.get("role"): r for r in client.search_runs(
        [client.get_run(pid).info.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{pid}' and attributes.status = 'FINISHED'")}
    out = {}
    for role, overrides in (("default", space.default), ("params", {})):
        if role == "default" and not space.default:
            continue
        if role in done:
            m = done[role].data.metrics
            out[role] = {"val_f1_macro": m.get("final_val_f1_macro"), "test_f1_macro": m.get("final_test_f1_macro"),
                         "mlflow_run_id": done[role].info.run_id}
            continue
        print(f"[{ctx.study}] reference run: {role} settings {overrides or '(params.yaml)'}", flush=True)
        r = _reference_fit(model, params, overrides, ctx, role)
        out[role] = {"val_f1_macro": r["val_f1_macro"], "test_f1_macro": r["test_f1_macro"],
                     "mlflow_run_id": r["mlflow_run_id"]}
        settings = {k: v for k, v in as_dict(section(params, f"models.{model}")).items() if v is not None}
        out[role]["config"] = {k: plain(v) for k, v in flatten({**settings, **overrides}).items()}
    return out


def _reference_fit(model, params, overrides, ctx: TrialContext, role: str) -> dict:
    """In the driver: a neural model with a Ray Train worker's threads, a baseline with its own settings."""
    threads = section(params, "train.cpus_per_worker") if is_neural(model) else None
    name = "default settings" if role == "default" else "params.yaml settings"
    return fit_in_trial(ctx, overrides, run_name=name, tags={"study": ctx.study, "role": role},
                        runner=LocalRunner(threads=threads))


def _reconcile(grid, client, exp: str, pid: str, study: str) -> list[dict]:
    """One record per trial; MLflow runs brought in line with how Tune ended them."""
    found = client.search_runs([exp], filter_string=f"tags.`mlflow.parentRunId` = '{pid}' and tags.role = 'trial'",
                               max_results=5000, order_by=["attributes.start_time ASC"])
    runs = {r.data.tags.get("ray_trial_id"): r for r in found}  # a trial resumed after an interrupt: its last run
    trials = []
    for res in grid:
        m = res.metrics or {}
        trial_id = m.get("trial_id") or (Path(res.path).name if res.path else None)
        run = runs.get(trial_id)
        if res.error is not None:
            status = "failed"
        elif m.get("final"):
            status = "finished"
        else:
            status = "stopped early"
        expected = {"failed": "FAILED", "stopped early": "KILLED", "finished": "FINISHED"}[status]
        if run is not None and run.info.status != expected:
            client.set_tag(run.info.run_id, "tune_status", status)
            client.set_terminated(run.info.run_id, expected)
        elif run is None and status == "failed":  # died before its run existed: record it anyway
            rid = record_failure(study, name=f"trial {trial_id}", error=str(res.error), parent=pid,
                                 tags={"ray_trial_id": str(trial_id), "study": study, "role": "trial",
                                       "tune_status": "failed"})
            run = client.get_run(rid)
        elif run is not None:
            client.set_tag(run.info.run_id, "tune_status", status)
        trials.append({"trial_id": trial_id, "status": status, "config": {k: plain(v) for k, v in
                                                                        (res.config or {}).items()},
                       "val_f1_macro": m.get(METRIC), "test_f1_macro": m.get("test_f1_macro") if status ==
                       "finished" else None, "error": (str(res.error).splitlines() or [""])[0][:300]
                       if res.error is not None else None,
                       "mlflow_run_id": run.info.run_id if run is not None else None})
    return trials


def _summarise(model, space, trials, references, pid, n, seconds, path) -> dict:
    done = [t for t in trials if t["status"] == "finished" and t["val_f1_macro"] is not None
            and math.isfinite(t["val_f1_macro"])]
    counts = {s: sum(t["status"] == s for t in trials) for s in ("finished", "stopped early", "failed")}
    if not done:
        errors = sorted({t["error"] for t in trials if t["error"]})
        raise StudyError(f"no trial of study tune-{model} finished ({counts}); first errors: {errors[:3]}")
    best = max(done, key=lambda t: t["val_f1_macro"])
    return {
        "model": model, "metric": METRIC, "parent_run_id": pid, "study_path": str(path),
        "search_space": str(space.path), "num_samples": n, "trials": counts, "seconds": round(seconds, 1),
        "best_trial": best["trial_id"], "best_config": best["config"],
        "tuned": {"val_f1_macro": best["val_f1_macro"], "test_f1_macro": best["test_f1_macro"],
                  "mlflow_run_id": best["mlflow_run_id"]},
        **{role: {k: v for k, v in ref.items() if k != "config"} for role, ref in references.items()},
        "all_trials": trials,
    }


def _log_summary(client, pid: str, summary: dict) -> None:
    from mlflow.entities import Metric, Param

    ts = int(time.time() * 1000)
    metrics = []
    for role in ("default", "params", "tuned"):
        for k in ("val_f1_macro", "test_f1_macro"):
            v = (summary.get(role) or {}).get(k)
            if v is not None:
                metrics.append(Metric(f"{role}_{k}", float(v), ts, 0))
    metrics += [Metric(f"trials_{k.replace(' ', '_')}", float(v), ts, 0) for k, v in summary["trials"].items()]
    existing = client.get_run(pid).data.params
    params = [Param(f"best.{k}", str(v)) for k, v in summary["best_config"].items() if f"best.{k}" not in existing]
    client.log_batch(pid, metrics=metrics, params=params)
    client.set_tag(pid, "best_trial", str(summary["best_trial"]))
    client.log_text(pid, comparison_markdown({summary["model"]: summary}), "comparison.md")
    client.log_dict(pid, {k: v for k, v in summary.items() if k != "all_trials"}, "comparison.json")
    client.log_dict(pid, {"trials": summary["all_trials"]}, "trials.json")


def gain_vs_spread(summary: dict, seed_sd: float | None) -> str:
    """Whether tuning's test-F1 gain over the params.yaml settings exceeds twice the seed spread of those
    settings (the sd of the train stage's single model over seeds)."""
    tuned, base = ((summary.get(r) or {}).get("test_f1_macro") for r in ("tuned", "params"))
    if tuned is None or base is None:
        return "n/a"
    gain = float(tuned) - float(base)
    if seed_sd is None:
        return f"{gain:+.4f} (no seed spread measured)"
    verdict = "beyond" if abs(gain) > 2 * seed_sd else "within"
    return f"{gain:+.4f}, {verdict} 2 sd of seeds ({2 * seed_sd:.4f})"


def comparison_markdown(summaries: dict, seed_sd: dict[str, float] | None = None) -> str:
    """The Supp. Table 4 analogue: test macro F1 with default, params.yaml and tuned settings, and whether the
    gain exceeds the spread over seeds (``seed_sd``: model -> sd of the params.yaml settings' test F1)."""
    seed_sd = seed_sd or {}
    lines = ["| model | default settings | params.yaml settings | tuned (best of study) | tuned - params.yaml | "
             "trials (finished / stopped early / failed) |", "|---|---|---|---|---|---|"]

    def f(s, role):
        v = (s.get(role) or {}).get("test_f1_macro")
        return "n/a" if v is None else f"{v:.4f}"

    for model, s in summaries.items():
        t = s["trials"]
        lines.append(f"| {model} | {f(s, 'default')} | {f(s, 'params')} | {f(s, 'tuned')} | "
                     f"{gain_vs_spread(s, seed_sd.get(model))} | {t['finished']} / {t['stopped early']} / "
                     f"{t['failed']} |")
    lines.append("")
    lines.append("Test-split ontology-corrected macro F1; each study selects on the validation split. A gain within "
                 "twice the seed spread of the params.yaml settings (`make seed-spread`, reports/seeds/) cannot be "
                 "told from a different seed.")
    return "\n".join(lines) + "\n"


def seed_spreads(models_dir: str | Path = "models", seeds_dir: str | Path = "reports/seeds") -> dict[str, float]:
    """model -> sd of its test macro F1 over seeds: from `make seed-spread` (reports/seeds/<model>.json), else
    from a train stage run with ensemble.spread_seeds > 1 (models/<model>/seeds.json)."""
    out = {}
    for f in [*sorted(Path(models_dir).glob(f"*/{SEEDS_FILE}")), *sorted(Path(seeds_dir).glob("*.json"))]:
        name = f.parent.name if f.name == SEEDS_FILE else f.stem
        out[name] = float(json.loads(f.read_text())["test_f1_macro"]["sd"])
    return out
