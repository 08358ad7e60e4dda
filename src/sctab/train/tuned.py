"""The DAG's `tune` stage: Ray Tune + Optuna studies before the train stages, when ``tune.in_dag`` asks for it.

Off (the default, and the paper's profiles), the stage writes ``tuned.json`` saying so, in a second, and the train
stages use ``models.<model>`` as they are. On, it runs a fresh study for each model of ``tune.models`` (search
spaces in conf/tune/<model>.yaml, ``tune.num_samples`` trials each, at most ``tune.time_budget_s`` seconds per
study) and records each best trial's settings; the train stages then train with ``models.<model>`` updated by
them, so one ``dvc repro`` on a reference gives tuned models. The trials' runs are in MLflow (experiments
``tune-<model>``), as with ``make tune-baselines``.
"""

from __future__ import annotations

import json
from pathlib import Path

from sctab.config import ConfigError
from sctab.io import write_json
from sctab.params_schema import section

TUNED_FILE = "tuned.json"


def in_dag(params: dict) -> bool:
    return section(params, "tune.in_dag")


def run_tune_stage(params: dict, *, store: str | Path, pca_dir: str | Path, augmentations: str | Path,
                   out: str | Path) -> dict:
    """The studies of ``tune.models`` (when ``tune.in_dag``), their best settings written to ``out``/tuned.json
    (and each study's summary to ``out``/<model>.json); returns what tuned.json holds."""
    out = Path(out)
    tcfg = section(params, "tune")
    if not tcfg.in_dag:
        record = {"in_dag": False, "models": {}}
        write_json(out / TUNED_FILE, record)
        return record
    models = list(tcfg.models)
    if not models:
        raise ConfigError("tune.in_dag is true but tune.models names no model to tune")
    budget = tcfg.time_budget_s
    if budget is not None and budget <= 0:
        raise ConfigError(f"tune.time_budget_s must be a positive number of seconds or null, got {budget!r}")
    from sctab.train.tune import run_study  # Ray and Optuna: only when a study runs

    record = {"in_dag": True, "time_budget_s": budget, "models": {}, "studies": {}}
    for m in models:
        summary = run_study(m, params, store=store, pca_dir=pca_dir, augmentations=augmentations, fresh=True,
                            reference_runs=False, time_budget_s=budget)
        write_json(out / f"{m}.json", summary)
        record["models"][m] = summary["best_config"]
        record["studies"][m] = {"parent_run_id": summary["parent_run_id"], "best_trial": summary["best_trial"],
                                "val_f1_macro": summary["tuned"]["val_f1_macro"], "trials": summary["trials"]}
    write_json(out / TUNED_FILE, record)
    return record


def tuned_overrides(tuned_dir: str | Path | None, model: str) -> dict:
    """The best trial's settings of ``model`` from the tune stage's output ({} when it did not tune it)."""
    if tuned_dir is None:
        return {}
    path = Path(tuned_dir) / TUNED_FILE
    if not path.is_file():
        raise ConfigError(f"{path} does not exist: run the tune stage first (`dvc repro tune`)")
    record = json.loads(path.read_text())
    return dict((record.get("models") or {}).get(model) or {})
