"""A real `mlflow models serve` of a small registered model on 127.0.0.1, under a bounded load.

Concurrent clients x request sizes are all answered; bad requests, sent while the load runs, get 400 with the
problem named and no traceback or install path; /ping answers afterwards.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from sctab.bench.serving import body, run
from sctab.data.store import Store
from sctab.registry import register_folder
from sctab.registry.register import store_class_ids
from tests.model_folders import write_model_folders
from tests.paths import REPO_ROOT as REPO
from tests.ray_cluster import free_port, kill_group

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def _serve(uri: str, port: int, log: Path) -> subprocess.Popen:
    # as `make serve` runs it: the venv's bin first on PATH (mlflow execs uvicorn from there)
    # (and this checkout's code: the model is logged as code that imports sctab.registry.pyfunc)
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PYTHONPATH": str(REPO / "src"),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.Popen([str(Path(sys.executable).with_name("mlflow")), "models", "serve", "-m", "models:/served/1",
                             "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port), "--workers", "2"],
                            env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)


def _wait(url: str, proc: subprocess.Popen, log: Path, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"server exited ({proc.returncode}):\n{log.read_text()[-3000:]}"
        try:
            if requests.get(url + "/ping", timeout=5).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(1)
    raise AssertionError(f"server did not come up:\n{log.read_text()[-3000:]}")


def _bad(url: str, genes: list[str]) -> list[tuple[int, str]]:
    neg = json.loads(body(genes, 3))
    neg["dataframe_split"]["data"][1][0] = -4
    unknown = json.loads(body(genes[:5], 2))
    unknown["dataframe_split"]["columns"] = ["TP53", "CD3E", *genes[2:5]]
    out = []
    for b in (neg, unknown):
        r = requests.post(url + "/invocations", json=b, timeout=120)
        out.append((r.status_code, r.text))
    return out


def test_served_model_holds_bounded_load_and_names_bad_input(store_dir, ontology, tracking, tmp_path):
    folders = write_model_folders(tmp_path / "models", store_dir)
    register_folder(folders / "linear", "served", class_ids=store_class_ids(store_dir), ontology=ontology,
                    params={"profile": "test"}, test_f1=0.5)
    genes = Store(store_dir).var["feature_id"].astype(str).tolist()
    port, log = free_port(), tmp_path / "serve.log"
    url = f"http://127.0.0.1:{port}"
    server = _serve(tracking, port, log)
    try:
        _wait(url, server, log)
        with ThreadPoolExecutor(max_workers=1) as pool:
            bad = pool.submit(_bad, url, genes)  # while the load runs
            table = run(url, genes, clients=[1, 3], cells=[5, 200], requests_per_client=2)
            answers = bad.result()
        assert (table["answered"] == table["requests"]).all() and len(table) == 4
        assert (table["cells_per_s"] > 0).all() and (table["p95_s"] >= table["p50_s"]).all()
        (neg_status, neg), (unk_status, unk) = answers
        assert neg_status == 400 and unk_status == 400, answers
        assert "INVALID_PARAMETER_VALUE" in neg and f"negative values: 1 ({genes[0]}), in 1 of the 3 cells" in neg
        assert "not genes of this model: 2 (TP53, CD3E)" in unk and "request of 2 cells" in unk
        for text in (neg, unk):
            assert "Traceback" not in text and "stack_trace" not in text and "site-packages" not in text
            assert str(Path(sys.executable).parents[1]) not in text
        assert requests.get(url + "/ping", timeout=10).status_code == 200
    finally:
        kill_group(server)
