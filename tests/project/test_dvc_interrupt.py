"""`dvc repro` interrupted mid-stage (Ctrl-C in `store`, SIGKILL in `train_linear`) and run again.

In a throw-away clone of the repository (tests/project/test_dvc_pipeline.py's `project` fixture): no partial output
is ever taken as complete (every writer fills a temporary folder and renames it into place), the re-run
redoes exactly the interrupted stage, and the outputs equal those of an uninterrupted run of the same stages:
the store bit for bit (its md5 in dvc.lock), the linear model's weights, gene and class tables and metrics
(training is seeded and runs on one thread). Not compared: model.yaml (it names the MLflow run and git commit
of the run that wrote it) and history.csv (it holds throughput timings).
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.dvc_project import run as _run

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
TARGET = "train_linear"
COMPARED = ("models/linear/model.pt", "models/linear/var.parquet", "models/linear/cell_type.parquet",
            "models/linear/metrics.json", "reports/train/linear.json")


def _start(project: Path, log: Path) -> subprocess.Popen:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1"}
    env.pop("RAY_ADDRESS", None)
    return subprocess.Popen(["dvc", "repro", TARGET], cwd=project, env=env, stdout=open(log, "w"),
                            stderr=subprocess.STDOUT, start_new_session=True)


def _interrupt_when(proc: subprocess.Popen, ready, sig: int, what: str, timeout: float = 400) -> None:
    """Send ``sig`` to dvc's whole process group (as Ctrl-C in a terminal does) once ``ready()`` holds."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"dvc repro ended (rc {proc.returncode}) before {what}")
        if ready():
            os.killpg(proc.pid, sig)
            break
        time.sleep(0.1)
    else:
        os.killpg(proc.pid, signal.SIGKILL)
        raise AssertionError(f"timed out waiting for {what}")
    try:
        proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    if sig == signal.SIGKILL:
        # whatever dvc started in that group (the stage's python, Ray's processes) goes with it
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _lock_md5(project: Path, stage: str, path: str) -> str:
    lock = yaml.safe_load((project / "dvc.lock").read_text())["stages"][stage]
    return next(o["md5"] for o in lock["outs"] if o["path"] == path)


def _digests(project: Path) -> dict:
    return {p: hashlib.md5((project / p).read_bytes()).hexdigest() for p in COMPARED}


def _temporaries(project: Path) -> list[Path]:
    return [p for d in ("data", "models", "reports/train") if (project / d).is_dir()
            for p in (project / d).glob(".*.tmp-*")]


def test_interrupted_repro_finishes_like_an_uninterrupted_one(project, tmp_path):  # noqa: F811
    log = tmp_path / "repro.log"
    # train long enough (60 short epochs, no early stop) that a loaded machine still sees a checkpoint before the
    # stage ends: with the profile's 4 epochs the whole fit takes under a second
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["models"]["linear"].update({"epochs": 60, "patience": None})
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    # 1. Ctrl-C while the store is being written (its temporary folder already has a part file)
    def store_writing():
        return any(p.is_dir() and any(p.rglob("part.*.parquet")) for p in (project / "data").glob(".store.tmp-*"))

    _interrupt_when(_start(project, log), store_writing, signal.SIGINT, "the store stage writing parts")
    assert not (project / "data" / "store").exists(), "a partial store was left in place"
    assert not [p for p in _temporaries(project) if p.name.startswith(".store.")], "Ctrl-C left a temporary"
    assert "store" in _run(["dvc", "status", "store"], project).stdout  # not taken as up to date

    # 2. SIGKILL during training, once the first epoch's checkpoint exists (no chance to clean up)
    def training():  # ray_results/ appears with train_linear's first checkpoint
        return (project / "ray_results").is_dir() and any((project / "ray_results").rglob("checkpoint_*"))

    _interrupt_when(_start(project, log), training, signal.SIGKILL, "train_linear's first checkpoint")
    assert (project / "data" / "store" / "train").is_dir(), "the store finished in the second run"
    assert not (project / "models" / "linear").exists(), "a partial model folder was left in place"
    status = _run(["dvc", "status", TARGET], project).stdout
    assert "train_linear" in status and "store" not in status.replace("data/store", "")

    # 3. run again: only the killed stage runs, and leftovers of the killed writer are cleaned up
    r = _run(["dvc", "repro", TARGET], project)
    assert "Running stage 'train_linear'" in r.stdout and "Running stage 'store'" not in r.stdout
    assert not _temporaries(project), _temporaries(project)
    assert "up to date" in _run(["dvc", "status", TARGET], project).stdout
    interrupted = {"store": _lock_md5(project, "store", "data/store"), **_digests(project)}

    # 4. the same two stages uninterrupted, from scratch: identical outputs
    _run(["dvc", "repro", "--force", "--single-item", "store"], project)
    _run(["dvc", "repro", "--force", "--single-item", TARGET], project)
    clean = {"store": _lock_md5(project, "store", "data/store"), **_digests(project)}
    assert clean == interrupted
