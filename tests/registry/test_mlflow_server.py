"""A team MLflow server for real: PostgreSQL 15 behind `mlflow server --app-name basic-auth` on 127.0.0.1.

- an unauthenticated (or wrongly authenticated) request is refused with 401;
- a tiny training run (Ray Train, as `dvc repro` runs it) logs to the server while the server is restarted
  mid-run: MLflow's HTTP client retries and the run finishes with every epoch logged;
- the password never shows up in run params/tags, captured output, Ray's logs, the server's log, files written
  by the run, or any process's command line;
- a server that stays down ends a training entry point with a clear message (exit 2), not a traceback.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest
import requests
import yaml

from tests.mlflow_server import team_server_running
from tests.paths import REPO_ROOT as REPO

pytestmark = [pytest.mark.slow, pytest.mark.needs_root, pytest.mark.timeout(300)]

# retries long enough to ride out a restart (~10 s): 0, 1, 2, 4, 8, 16 s between attempts, plus jitter
RETRY_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "8", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
             "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5", "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}


@pytest.fixture(scope="module")
def team_server():
    with team_server_running("sctab-mlflow-") as server:
        yield server


@pytest.fixture
def server_env(team_server, monkeypatch):
    """A client of the team server: URI and credentials from the environment only."""
    for k, v in {**team_server.client_env(), **RETRY_ENV}.items():
        monkeypatch.setenv(k, v)
    return team_server


def _search(url, auth=None):
    return requests.get(f"{url}/api/2.0/mlflow/experiments/search", params={"max_results": 1}, auth=auth,
                        timeout=30)


def test_unauthenticated_requests_are_refused(team_server, monkeypatch):
    from sctab.tracking.runs import TrackingServerError, experiment_id

    assert _search(team_server.url).status_code == 401
    assert _search(team_server.url, auth=(team_server.admin_user, "not-the-password")).status_code == 401
    assert _search(team_server.url, auth=(team_server.admin_user, team_server.admin_password)).status_code == 200
    # the project's entry point says what is wrong, before any training starts
    monkeypatch.setenv("MLFLOW_TRACKING_URI", team_server.url)
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    with pytest.raises(TrackingServerError, match="MLFLOW_TRACKING_USERNAME"):
        experiment_id("train")
    # the server listens on loopback only
    conns = [c for c in psutil.net_connections("tcp") if c.status == "LISTEN" and c.laddr.port == team_server.port]
    assert conns and all(c.laddr.ip == "127.0.0.1" for c in conns), conns


def _wait_for_run(server, timeout: float) -> bool:
    """True once the training run exists on the server (its epochs are still to come)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(server.url)
    deadline = time.time() + timeout
    while time.time() < deadline:
        time.sleep(0.2)
        try:
            exp = client.get_experiment_by_name("train")
            if exp and client.search_runs([exp.experiment_id]):
                return True
        except Exception:  # noqa: BLE001 - the server may be starting
            pass
    return False


def test_training_logs_through_a_server_restart_and_never_leaks_the_password(census_params, store_dir, server_env,
                                                                             tmp_path):
    """The train stage as DVC runs it (a process with its own local Ray); this process restarts the server."""
    from mlflow.tracking import MlflowClient

    server = server_env
    epochs = 6
    params = {k: v for k, v in copy.deepcopy(census_params).items() if not k.startswith("_")}
    params["models"]["linear"]["epochs"] = epochs
    params["train"].update({"num_workers": 1, "cpus_per_worker": 1})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    ray_tmp = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))  # short: Ray's socket paths are length-limited
    env = {**os.environ, "RAY_TMPDIR": str(ray_tmp), "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.Popen([sys.executable, str(REPO / "pipelines" / "train.py"), "--model", "linear", "--params",
                             "params.yaml", "--store", str(store_dir), "--out", "model", "--report", "report.json"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        # stop the server as soon as the run exists (before Ray is up and any epoch is logged), keep it down
        # 3 s, start it again on the same port: the params and the first epochs are logged into the outage
        assert _wait_for_run(server, 200), "no training run appeared"
        server.stop()
        down_at = time.time()
        time.sleep(3)
        server.start()
        out, _ = proc.communicate(timeout=200)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        ray_logs = [f for f in ray_tmp.rglob("*") if f.is_file() and f.stat().st_size < 50_000_000]
        ray_bytes = [(f, f.read_bytes()) for f in ray_logs]
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert proc.returncode == 0, out[-4000:]
    client = MlflowClient(server.url)
    exp = client.get_experiment_by_name("train")
    runs = client.search_runs([exp.experiment_id], filter_string="tags.model_type = 'linear'")
    run = max(runs, key=lambda r: r.info.start_time)
    assert run.info.status == "FINISHED"
    # every epoch reached the server, those logged while it was down included (retried, not lost or doubled)
    history = client.get_metric_history(run.info.run_id, "val_f1_macro")
    assert sorted(m.step for m in history) == list(range(epochs))
    assert min(m.timestamp / 1000 for m in history) > down_at, "an epoch was logged before the outage"
    assert run.data.params["epochs"] == str(epochs)
    assert "model/model.pt" in {a.path for a in client.list_artifacts(run.info.run_id, "model")}
    assert json.loads((tmp_path / "report.json").read_text())["epochs_run"] == epochs

    # the password: never in params, tags, output, logs, written files or command lines
    secret = server.admin_password
    for r in client.search_runs([exp.experiment_id]):
        assert not any(secret in str(v) for v in {**r.data.params, **r.data.tags}.values())
    assert secret not in out
    assert secret not in server.log.read_text()
    assert ray_bytes, "no Ray logs to check"
    for f, data in ray_bytes:
        assert secret.encode() not in data, f
    for f in tmp_path.rglob("*"):
        if f.is_file():
            assert secret.encode() not in f.read_bytes(), f
    for p in psutil.process_iter(["cmdline"]):
        cmd = " ".join(p.info.get("cmdline") or [])
        assert secret not in cmd and server.pg.password not in cmd, p.pid


def test_a_server_that_stays_down_ends_training_with_a_clear_message(census_params, store_dir, server_env,
                                                                     tmp_path):
    server = server_env
    params = {k: v for k, v in census_params.items() if not k.startswith("_")}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    env = {**os.environ, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "0",
           "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}
    env.pop("RAY_ADDRESS", None)
    server.stop()
    try:
        r = subprocess.run([sys.executable, str(REPO / "pipelines" / "train.py"), "--model", "linear", "--params",
                            "params.yaml", "--store", str(store_dir), "--out", "model"],
                           cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    finally:
        server.start()
    assert r.returncode == 2, r.stdout[-2000:] + r.stderr[-2000:]
    assert f"train: error: MLflow tracking server {server.url} failed" in r.stderr
    assert "is the server running?" in r.stderr and "Traceback" not in r.stderr
    assert server.admin_password not in r.stdout + r.stderr
    assert not (tmp_path / "model").exists()


# ------------------------------------------------------------------ the registry through the team server
def test_register_and_promote_through_the_team_server(server_env, store_dir, ontology, reg_folders):
    """The lead's registry (register, @challenger, promote rules, the pyfunc) against Postgres + basic auth."""
    import mlflow

    from sctab.registry import promote
    from sctab.registry.register import client
    from tests.registry.test_registry import _counts, _register

    folders = reg_folders
    v = _register(folders / "sctab", "sctab-ensemble", store_dir, ontology, 0.81)
    assert (v.version, v.reused) == ("1", False)
    c = client()
    assert str(c.get_model_version_by_alias("sctab-ensemble", "challenger").version) == "1"
    assert _register(folders / "sctab", "sctab-ensemble", store_dir, ontology, 0.81).reused
    # the pyfunc's artifacts come back through the server's artifact proxy, authenticated
    model = mlflow.pyfunc.load_model("models:/sctab-ensemble@challenger")
    assert len(model.predict(_counts(store_dir, n=10))) == 10
    _register(folders / "linear", "lin-team", store_dir, ontology, 0.70)
    assert promote("lin-team").promoted
    worse = _register(folders / "linear2", "lin-team", store_dir, ontology, 0.65)
    p = promote("lin-team", worse.version)
    assert not p.promoted and str(c.get_model_version_by_alias("lin-team", "champion").version) == "1"
    # and nobody without credentials can read the registry
    r = requests.get(f"{server_env.url}/api/2.0/mlflow/registered-models/get", params={"name": "lin-team"},
                     timeout=30)
    assert r.status_code == 401


@pytest.fixture(scope="module")
def reg_folders(store_dir, tmp_path_factory) -> Path:
    """Small model folders to register (random weights: registration does not care how good they are)."""
    from tests.model_folders import write_model_folders

    return write_model_folders(tmp_path_factory.mktemp("reg-models"), store_dir, linear_seeds=(0, 5))


def _outage_at_first_version_tag(monkeypatch, server, down_s: float) -> dict:
    """Stop the real server at the worst moment: the model version exists, its tags and alias do not yet.

    The first set_model_version_tag call stops the server, then the real call goes to the dead server; a
    thread starts it again after ``down_s`` seconds. Only the trigger is patched; every request is real.
    """
    import threading

    from mlflow.tracking import MlflowClient

    original = MlflowClient.set_model_version_tag
    state: dict = {}

    def trigger(self, *args, **kwargs):
        if not state:
            server.stop()
            state["down_at"] = time.time()

            def back():
                time.sleep(down_s)
                server.start()
                state["up_at"] = time.time()

            state["thread"] = threading.Thread(target=back, daemon=True)
            state["thread"].start()
        return original(self, *args, **kwargs)

    monkeypatch.setattr(MlflowClient, "set_model_version_tag", trigger)
    return state


def test_restart_during_registration_is_retried_and_completes(server_env, store_dir, ontology, monkeypatch,
                                                             reg_folders):
    from sctab.registry.register import client
    from tests.registry.test_registry import _register

    folders = reg_folders
    state = _outage_at_first_version_tag(monkeypatch, server_env, down_s=2)
    v = _register(folders / "linear", "restart-ok", store_dir, ontology, 0.7)
    state["thread"].join(timeout=120)
    assert state.get("up_at"), "the server was not restarted"
    c = client()
    (mv,) = c.search_model_versions("name = 'restart-ok'")
    assert str(mv.version) == v.version and mv.status == "READY"
    assert mv.tags["test_f1_macro"] == "0.700000" and mv.tags["run_id"] and mv.tags["bundle_md5"]
    assert str(c.get_model_version_by_alias("restart-ok", "challenger").version) == v.version


def test_outage_longer_than_the_retries_leaves_no_half_registered_version(server_env, store_dir, ontology,
                                                                          monkeypatch, reg_folders):
    from sctab.registry import RegistryError
    from sctab.registry.register import client
    from tests.registry.test_registry import _register

    folders = reg_folders
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "0")
    state = _outage_at_first_version_tag(monkeypatch, server_env, down_s=4)
    with pytest.raises(RegistryError, match="was removed again") as info:
        _register(folders / "linear2", "restart-fail", store_dir, ontology, 0.6)
    state["thread"].join(timeout=120)
    assert server_env.admin_password not in str(info.value)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "8")
    # the version created before the outage was deleted once the server was back: nothing half-registered
    assert client().search_model_versions("name = 'restart-fail'") == []
