"""Runs a killed process left RUNNING are closed as FAILED, with the reason, by the next stage of their kind.

A real process opens a real MLflow run (sqlite store) through tracked_run and is killed with SIGKILL inside it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

from mlflow.tracking import MlflowClient

from sctab.tracking import STALE_TAG, close_stale_runs, owner_gone, owner_tags, tracked_run
from tests.paths import REPO_ROOT as REPO


def _killed_run(uri: str, model: str, data_version: str) -> str:
    """A child opens a run tagged like a train stage's, prints its id, and is SIGKILLed while inside it."""
    code = textwrap.dedent(f"""
        import os, signal, sys
        from unittest import mock
        from sctab.tracking import tracked_run
        with mock.patch("sctab.tracking.runs.data_version", return_value={data_version!r}):
            with tracked_run("train", name="{model}-seed0", tags={{"model_type": "{model}"}}, uri={uri!r}) as run:
                print(run.run_id, flush=True)
                os.kill(os.getpid(), signal.SIGKILL)
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
    return r.stdout.strip().splitlines()[-1]


def test_killed_stage_run_is_closed_failed_with_the_reason(tmp_path, capsys):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    dead = _killed_run(uri, "linear", "data/store@abc")
    other_data = _killed_run(uri, "linear", "data/store@old")
    other_model = _killed_run(uri, "mlp", "data/store@abc")
    run = client.get_run(dead)
    assert run.info.status == "RUNNING"
    assert run.data.tags["pid"].isdigit() and run.data.tags["host"] == socket.gethostname()

    closed = close_stale_runs("train", data_version="data/store@abc", match={"model_type": ["linear"]},
                              who="train_linear", uri=uri)
    assert closed == [dead]
    run = client.get_run(dead)
    assert run.info.status == "FAILED"
    assert "is gone" in run.data.tags[STALE_TAG] and "train_linear" in run.data.tags[STALE_TAG]
    assert run.data.tags["error"] == run.data.tags[STALE_TAG]
    assert dead in capsys.readouterr().err
    # another data version, another model: not this stage's, left as they are
    assert client.get_run(other_data).info.status == "RUNNING"
    assert client.get_run(other_model).info.status == "RUNNING"


def test_live_and_unjudgeable_runs_are_left_alone(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    with tracked_run("train", name="live", tags={"model_type": "linear"}, uri=uri) as live:
        exp = client.get_run(live.run_id).info.experiment_id
        elsewhere = client.create_run(exp, tags={"model_type": "linear", "host": "another-host", "pid": "1"})
        legacy = client.create_run(exp, tags={"model_type": "linear"})  # from before owners were recorded
        assert close_stale_runs("train", uri=uri) == []
        for r in (live.run_id, elsewhere.info.run_id, legacy.info.run_id):
            assert client.get_run(r).info.status == "RUNNING"


def test_recycled_pid_is_not_the_owner():
    me = owner_tags()
    assert owner_gone(me) is None
    assert "another process" in owner_gone({**me, "pid_started": str(float(me["pid_started"]) - 3600)})
    assert owner_gone({**me, "host": "elsewhere"}) is None


def test_a_resumed_run_loses_the_stale_reason(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    dead = _killed_run(uri, "linear", "data/store@abc")
    assert close_stale_runs("train", uri=uri) == [dead]
    with tracked_run("train", name="again", resume=dead, uri=uri):
        tags = client.get_run(dead).data.tags
        assert STALE_TAG not in tags and "error" not in tags and tags["pid"] == str(os.getpid())
    assert client.get_run(dead).info.status == "FINISHED"


def test_leftover_ray_sessions_are_removed(tmp_path):
    """Sessions of gone Rays go; one a live process names, and one just created, stay."""
    from sctab.train.ray_sessions import remove_stale_sessions

    old = time.time() - 3600
    gone, live, fresh = (tmp_path / f"session_2026-01-01_00-00-0{i}_1234{i}" for i in range(3))
    for d in (gone, live, fresh):
        (d / "logs").mkdir(parents=True)
        (d / "logs" / "raylet.out").write_text("x")
    for d in (gone, live):
        os.utime(d, (old, old))
    (tmp_path / "session_latest").symlink_to(gone)
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", f"--log_dir={live}/logs"])
    try:
        removed = remove_stale_sessions(tmp_path)
    finally:
        holder.kill()
        holder.wait()
    assert removed == [gone]
    assert not gone.exists() and live.is_dir() and fresh.is_dir()
