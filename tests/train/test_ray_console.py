"""The console of a training stage: one line per epoch and the dashboard's address, not Ray's internals.

Runs `pipelines/train.py --model linear` for real (local Ray with its dashboard, Ray Train, MLflow sqlite),
once at the default level and once with SCTAB_LOG=debug.
"""

from __future__ import annotations

import copy
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sctab.train import ray_console
from tests.paths import REPO_ROOT as REPO

NOISE = ("PlacementGroupCleaner", "Reporting training result", "has constructor arguments in the object store",
         "Token authentication is enabled")
# Every line the default console may print: ours (the dashboard, the epochs, the result, the clean-up of an earlier
# crash's session folders), MLflow's notices on a new database, and Ray's warnings about the machine itself
# (a disk nearly full is worth showing a user; CI once ran on one and the raylet said so).
EXPECTED = (r"^Ray dashboard: http://127\.0\.0\.1:\d+", r"\[linear seed 0\] epoch \d+: train loss",
            r"^linear: best epoch \d+, val F1", r"^removed \d+ leftover Ray session folder",
            r"INFO mlflow\.store\.db\.utils: (Creating initial|Updating database)",
            r"\(raylet\).*file_system_monitor\.cc:\d+: .* is over \d+% full")


def test_debug_switch(monkeypatch):
    monkeypatch.setenv("SCTAB_LOG", "debug")
    monkeypatch.delenv("RAY_DEDUP_LOGS_SKIP_REGEX", raising=False)
    ray_console.prepare()
    assert ray_console.debug() and ray_console.driver_level() == "INFO"
    assert "RAY_DEDUP_LOGS_SKIP_REGEX" not in os.environ
    monkeypatch.setenv("SCTAB_LOG", "info")
    ray_console.prepare()
    assert not ray_console.debug() and ray_console.driver_level() == "WARNING"
    # the pattern matches the line Ray prints (as forwarded from the controller)
    line = ("[2026-11-25 18:54:08,569 E 9818 9921] core_worker.cc:2465: Actor with class name: 'PreemptionWatcher' "
            "and ID: 'e94b' has constructor arguments in the object store and max_restarts > 0. If")
    assert re.search(os.environ["RAY_DEDUP_LOGS_SKIP_REGEX"], line)


def _train(tmp: Path, store_dir: Path, params: dict, uri: str, **env) -> subprocess.CompletedProcess:
    (tmp / "params.yaml").write_text(yaml.safe_dump(params))
    full = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "SCTAB_LOG", "RAY_DEDUP_LOGS_SKIP_REGEX")}
    full.update(MLFLOW_TRACKING_URI=uri, PYTHONPATH=str(REPO / "src"), **env)
    return subprocess.run([sys.executable, str(REPO / "pipelines" / "train.py"), "--model", "linear", "--params",
                           "params.yaml", "--store", str(store_dir), "--out", "model"],
                          cwd=tmp, env=full, capture_output=True, text=True, timeout=500)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_train_stage_console(census_params, store_dir, tmp_path):
    params = {k: v for k, v in copy.deepcopy(census_params).items() if not k.startswith("_")}
    params["train"].update({"num_workers": 1, "cpus_per_worker": 1})
    params["models"]["linear"]["epochs"] = 3
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    r = _train(tmp_path, store_dir, params, uri)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-4000:]
    assert not [n for n in NOISE if n in out], out
    assert re.search(r"Ray dashboard: http://127\.0\.0\.1:\d+", out), out
    assert len(re.findall(r"\[linear seed 0\] epoch \d+:", out)) == 3, out
    unexpected = [line for line in out.strip().splitlines()
                  if line.strip() and not any(re.search(p, line) for p in EXPECTED)]
    assert not unexpected, out
    r = _train(tmp_path, store_dir, params, uri, SCTAB_LOG="debug")
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-4000:]
    assert "Reporting training result" in out, out[-4000:]
