"""Ray Tune + Optuna studies for real: local Ray, MLflow parent and nested trial runs, failures, resume."""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from sctab.config import REPO_ROOT
from sctab.train.search_space import load_search_space
from sctab.train.tune import run_study
from tests.conftest import pipeline_help

pytestmark = pytest.mark.slow

SPACE = {
    "space": {"eta": {"loguniform": [0.1, 0.5]}, "max_depth": {"randint": [2, 4]}, "max_bin": {"randint": [1, 256]}},
    "default": {"n_estimators": 20, "eta": 0.3, "max_depth": 6, "early_stopping_rounds": None},
    # max_bin 1 passes our checks but XGBoost refuses it when training starts: a trial that fails at run time
    # (the seeded sampler draws the other trials' max_bin from 2..256)
    "points_to_evaluate": [{"eta": 0.3, "max_depth": 3, "max_bin": 1}],
}


def _params(census_params, **tune):
    p = copy.deepcopy(census_params)
    p["models"]["xgboost"].update({"n_estimators": 20, "nthread": 1})
    p["tune"].update({"max_concurrent": 2, "cpus_per_trial": 1, "report_every": 5, **tune})
    return p


def _space(tmp_path, doc=SPACE):
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_study_tracks_trials_and_survives_a_failing_one(workdir, census_params, store_dir, pca_dir):
    from mlflow.tracking import MlflowClient

    tmp, uri = workdir
    params = _params(census_params)
    summary = run_study("xgboost", params, store=store_dir, pca_dir=pca_dir, storage=tmp / "ray_results",
                        space=load_search_space("xgboost", _space(tmp)), num_samples=4, verbose=0)
    assert summary["trials"]["failed"] == 1
    assert summary["trials"]["finished"] + summary["trials"]["stopped early"] == 3
    assert summary["best_config"]["max_bin"] >= 2
    for role in ("default", "params", "tuned"):
        assert 0.0 < summary[role]["test_f1_macro"] <= 1.0, role

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("tune-xgboost")
    runs = client.search_runs([exp.experiment_id])
    parent = client.get_run(summary["parent_run_id"])
    assert parent.info.status == "FINISHED" and parent.data.tags["role"] == "study"
    assert parent.data.metrics["tuned_test_f1_macro"] == pytest.approx(summary["tuned"]["test_f1_macro"])
    assert parent.data.params["best.max_bin"] == str(summary["best_config"]["max_bin"])
    arts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"comparison.md", "comparison.json", "trials.json"} <= arts
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    trials = [r for r in children if r.data.tags.get("role") == "trial"]
    assert sorted(r.data.tags["role"] for r in children if r.data.tags["role"] != "trial") == ["default", "params"]
    assert len(trials) == 4 and len({r.data.tags["ray_trial_id"] for r in trials}) == 4
    status = {r.data.tags["tune_status"]: r.info.status for r in trials}
    assert status["failed"] == "FAILED"
    failed = next(r for r in trials if r.data.tags["tune_status"] == "failed")
    assert "max_bin" in failed.data.tags["error"]
    for r in trials:
        want = {"failed": "FAILED", "finished": "FINISHED", "stopped early": "KILLED"}[r.data.tags["tune_status"]]
        assert r.info.status == want, r.data.tags
    best = client.get_run(summary["tuned"]["mlflow_run_id"])
    assert best.data.metrics["final_val_f1_macro"] == pytest.approx(summary["tuned"]["val_f1_macro"])


def test_bad_space_fails_before_any_trial(workdir, census_params, store_dir, pca_dir):
    from sctab.train.search_space import SearchSpaceError

    tmp, uri = workdir
    doc = {"space": {"eta": {"uniform": [0.1, 0.3]}, "depth": {"randint": [2, 4]}}}
    with pytest.raises(SearchSpaceError, match="depth"):
        run_study("xgboost", _params(census_params), store=store_dir, pca_dir=pca_dir, storage=tmp / "rr",
                  space=load_search_space("xgboost", _space(tmp, doc)), num_samples=2, verbose=0)
    assert not (tmp / "rr").exists()


def _trial_runs(uri, status=None):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("tune-xgboost")
    if exp is None:
        return []
    runs = client.search_runs([exp.experiment_id], filter_string="tags.role = 'trial'")
    return [r for r in runs if status is None or r.info.status == status]


def test_interrupted_study_resumes_without_repeating_trials(workdir, census_params, store_dir, pca_dir):
    """SIGINT (Ctrl+C) mid-study, then the same command again: finished trials are not run twice."""
    tmp, uri = workdir
    params = _params(census_params, max_concurrent=1, num_samples={"xgboost": 5})
    params["models"]["xgboost"]["n_estimators"] = 60  # ~ a few seconds per trial: time to interrupt
    params["tune"]["asha"] = {"grace_period": 100, "reduction_factor": 2}  # no early stopping: every trial finishes
    (tmp / "params.yaml").write_text(yaml.safe_dump(params))
    doc = copy.deepcopy(SPACE)
    doc["space"]["max_bin"] = {"choice": [32, 64]}
    doc["points_to_evaluate"] = []
    space = _space(tmp, doc)
    cmd = [sys.executable, str(REPO_ROOT / "pipelines" / "tune.py"), "--model", "xgboost", "--params", "params.yaml",
           "--store", str(store_dir), "--pca", str(pca_dir), "--space", str(space), "--out", "reports/tune"]
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, cwd=tmp, env=env, stdout=open(tmp / "first.log", "w"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    deadline = time.time() + 240
    while time.time() < deadline and len(_trial_runs(uri, "FINISHED")) < 2 and proc.poll() is None:
        time.sleep(0.5)
    assert proc.poll() is None, (tmp / "first.log").read_text()[-3000:]
    os.kill(proc.pid, signal.SIGINT)  # the driver only, as Ctrl+C would reach it first
    assert proc.wait(timeout=120) != 0
    done_before = {r.data.tags["ray_trial_id"] for r in _trial_runs(uri, "FINISHED")}
    assert 2 <= len(done_before) < 5, (tmp / "first.log").read_text()[-3000:]
    assert not (tmp / "reports/tune/xgboost.json").exists()

    second = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=400)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "resuming study tune-xgboost" in second.stdout
    finished = _trial_runs(uri, "FINISHED")
    ids = [r.data.tags["ray_trial_id"] for r in finished]
    assert len(ids) == len(set(ids)) == 5, "every trial finished exactly once"
    assert done_before <= set(ids)
    summary = json.loads((tmp / "reports/tune/xgboost.json").read_text())
    assert summary["trials"] == {"finished": 5, "stopped early": 0, "failed": 0}
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("tune-xgboost")
    parents = client.search_runs([exp.experiment_id], filter_string="tags.role = 'study'")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    refs = client.search_runs([exp.experiment_id], filter_string="tags.role = 'default'")
    assert len(refs) == 1, "reference runs are reused on resume"
    assert (tmp / "reports/tune/summary.json").exists() and "xgboost" in (tmp / "reports/tune/summary.md").read_text()


def test_write_back_keeps_comments(tmp_path, census_params):
    from sctab.config import update_params_file

    src = (REPO_ROOT / "conf" / "profiles" / "tiny.yaml").read_text()
    path = tmp_path / "params.yaml"
    path.write_text(src)
    old = update_params_file(path, "models.xgboost", {"eta": 0.123, "max_depth": 7})
    assert old == {"eta": 0.1, "max_depth": 6}
    text = path.read_text()
    assert "# paper (Methods, \"XGBoost model\")" in text and "eta: 0.123" in text
    doc = yaml.safe_load(text)
    assert doc["models"]["xgboost"]["max_depth"] == 7 and doc["models"]["mlp"] == yaml.safe_load(src)["models"]["mlp"]
    with pytest.raises(ValueError, match="models.lightgbm"):
        update_params_file(path, "models.lightgbm", {"eta": 1})


def test_tune_pipeline_help():
    out = pipeline_help("tune")
    assert "--write-params" in out and "--fresh" in out and "resume" in out


def test_neural_study_reports_per_epoch(workdir, census_params, store_dir, augment_dir):
    """The stretch goal: linear learning rate and weight decay, trials on the training loop in-process."""
    from mlflow.tracking import MlflowClient

    tmp, uri = workdir
    params = _params(census_params)
    params["models"]["linear"].update({"epochs": 3})
    summary = run_study("linear", params, store=store_dir, augmentations=augment_dir, storage=tmp / "rr",
                        num_samples=2, verbose=0)
    assert summary["trials"]["failed"] == 0 and summary["tuned"]["test_f1_macro"] > 0.2
    assert set(summary["best_config"]) == {"lr", "weight_decay"}
    client = MlflowClient(uri)
    best = client.get_run(summary["tuned"]["mlflow_run_id"])
    hist = client.get_metric_history(best.info.run_id, "val_f1_macro")
    assert [h.step for h in hist] == [0, 1, 2]
    assert {"default", "params"} <= {k for k in summary if k in ("default", "params")}


def test_sctab_joins_the_studies(workdir, census_params, store_dir, augment_dir):
    """scTab is tuned like the baselines: its own search space, trials on the training loop, per-epoch reports."""
    from mlflow.tracking import MlflowClient

    tmp, uri = workdir
    space = load_search_space("sctab")
    assert {"lr", "weight_decay", "lr_gamma", "batch_size"} <= set(space.space)
    params = _params(census_params)
    params["models"]["sctab"].update({"epochs": 2})
    params["models"]["sctab"]["arch"].update({"n_d": 16, "n_a": 8})
    summary = run_study("sctab", params, store=store_dir, augmentations=augment_dir, storage=tmp / "rr",
                        num_samples=2, verbose=0, reference_runs=False)
    assert summary["trials"]["failed"] == 0 and 0.0 < summary["tuned"]["test_f1_macro"] <= 1.0
    assert set(summary["best_config"]) == set(space.space)
    hist = MlflowClient(uri).get_metric_history(summary["tuned"]["mlflow_run_id"], "val_f1_macro")
    assert len(hist) >= 1 and all(0.0 <= h.value <= 1.0 for h in hist)


def test_the_dag_tune_stage_hands_its_best_settings_to_the_train_stage(workdir, census_params, store_dir,
                                                                        augment_dir, pca_dir, monkeypatch):
    """tune.in_dag: the `tune` stage runs a fresh study per tune.models within tune.time_budget_s and records the
    best trial's settings; the train stage (`--tuned`) trains with them. Off, it records that nothing was tuned."""
    from sctab.config import ConfigError
    from sctab.train.command import main as train_main
    from sctab.train.tuned import TUNED_FILE, run_tune_stage, tuned_overrides

    tmp, _ = workdir
    monkeypatch.chdir(tmp)  # the studies' ray_results go to the project root: here
    params = _params(census_params, in_dag=True, models=["linear"], num_samples={"linear": 2}, time_budget_s=600)
    params["models"]["linear"].update({"epochs": 2})
    rec = run_tune_stage(params, store=store_dir, pca_dir=pca_dir, augmentations=augment_dir, out=tmp / "tuned")
    best = rec["models"]["linear"]
    assert set(best) == {"lr", "weight_decay"} and best["lr"] != params["models"]["linear"]["lr"]
    assert rec["studies"]["linear"]["trials"]["failed"] == 0 and (tmp / "tuned" / "linear.json").is_file()
    assert tuned_overrides(tmp / "tuned", "linear") == best and tuned_overrides(tmp / "tuned", "mlp") == {}
    (tmp / "params.yaml").write_text(yaml.safe_dump(params))
    train_main(["--model", "linear", "--params", str(tmp / "params.yaml"), "--store", str(store_dir),
                "--tuned", str(tmp / "tuned"), "--out", str(tmp / "models" / "linear")])
    meta = yaml.safe_load((tmp / "models" / "linear" / "model.yaml").read_text())
    assert meta["training"]["lr"] == pytest.approx(best["lr"])
    assert meta["training"]["weight_decay"] == pytest.approx(best["weight_decay"])

    off = run_tune_stage({**params, "tune": {**params["tune"], "in_dag": False}}, store=store_dir, pca_dir=pca_dir,
                         augmentations=augment_dir, out=tmp / "off")
    assert off == {"in_dag": False, "models": {}} and json.loads((tmp / "off" / TUNED_FILE).read_text()) == off
    for bad, match in (({"in_dag": "yes"}, "tune.in_dag must be true or false"),
                       ({"in_dag": True, "models": []}, "names no model"),
                       ({"in_dag": True, "time_budget_s": -5}, "time_budget_s must be a positive number")):
        with pytest.raises(ConfigError, match=match):
            run_tune_stage({**params, "tune": {**params["tune"], **bad}}, store=store_dir, pca_dir=pca_dir,
                           augmentations=augment_dir, out=tmp / "bad")
    with pytest.raises(ConfigError, match="run the tune stage first"):
        tuned_overrides(tmp / "missing", "linear")
    assert "tune.in_dag" in pipeline_help("tune_stage")
