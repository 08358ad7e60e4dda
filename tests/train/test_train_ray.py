"""Ray Train for real: a two-node local cluster, and a worker killed mid-training that resumes.

Both train a small scTab on the test store and log to a throw-away MLflow sqlite store.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import threading
import time

import psutil
import pytest
import yaml

from sctab.data.store import Store
from sctab.train.spec import spec_from_params
from tests.paths import REPO_ROOT as REPO
from tests.ray_cluster import CLIENT_ENV, LocalCluster

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def _spec(params, store_dir, augment_dir, **over):
    return spec_from_params(params, "sctab", store=str(store_dir), augmentations=str(augment_dir), **over)


def test_two_node_cluster_trains_and_logs(census_params, store_dir, augment_dir, workdir):
    """As a user would: `RAY_ADDRESS=<head> python pipelines/train.py ...` against a running two-node cluster."""
    from mlflow.tracking import MlflowClient

    from sctab.models import load as load_model_folder

    tmp, uri = workdir
    params = {k: v for k, v in copy.deepcopy(census_params).items() if not k.startswith("_")}
    params["train"].update({"num_workers": 2, "cpus_per_worker": 1})
    params["models"]["sctab"]["epochs"] = 3
    (tmp / "params.yaml").write_text(yaml.safe_dump(params))
    cluster = LocalCluster(n_nodes=2, cpus_per_node=1).start()
    try:
        env = {**os.environ, **CLIENT_ENV, "RAY_ADDRESS": cluster.address, "MLFLOW_TRACKING_URI": uri}
        r = subprocess.run([sys.executable, str(REPO / "pipelines" / "train.py"), "--model", "sctab",
                            "--params", "params.yaml", "--store", str(store_dir), "--augmentations", str(augment_dir),
                            "--out", "model", "--report", "report.json"],
                           cwd=tmp, env=env, capture_output=True, text=True, timeout=500)
    finally:
        cluster.stop()
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    report = json.loads((tmp / "report.json").read_text())
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("train").experiment_id])
    assert run.info.status == "FINISHED"
    nodes = run.data.tags["worker_nodes"].split(",")
    assert len(nodes) == 2 and len(set(nodes)) == 2, f"both workers on one node: {nodes}"
    assert run.data.tags["model_type"] == "sctab" and run.data.tags["seed"] == "0"
    assert {"git_commit", "profile", "data_version"} <= set(run.data.tags)
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_f1_macro")] == [0, 1, 2]
    # the two workers' shards add up to the whole training split, every epoch
    rows = [m.value for m in client.get_metric_history(run.info.run_id, "train_rows")]
    assert rows == [Store(store_dir).split("train").n_rows] * 3
    arts = {a.path for a in client.list_artifacts(run.info.run_id, "model")}
    assert {"model/model.pt", "model/model.yaml", "model/var.parquet", "model/cell_type.parquet"} <= arts
    trained = load_model_folder(tmp / "model")
    assert trained.meta["run_id"] == run.info.run_id and len(trained.classes) == Store(store_dir).n_classes
    assert report["val_f1_macro"] == pytest.approx(run.data.metrics["final_val_f1_macro"], abs=1e-6)


def _ray_train_workers() -> list[psutil.Process]:
    out = []
    for p in psutil.Process().children(recursive=True):
        try:
            if "RayTrainWorker" in p.name() or "RayTrainWorker" in " ".join(p.cmdline()):
                out.append(p)
        except psutil.Error:
            pass
    return out


def test_killed_worker_resumes_from_its_last_checkpoint(census_params, store_dir, augment_dir, workdir):
    from mlflow.tracking import MlflowClient

    from sctab.train.fitting import fit
    from sctab.train.ray_train import ensure_ray

    tmp, uri = workdir
    ensure_ray(num_cpus=2)
    epochs = 8
    spec = _spec(census_params, store_dir, augment_dir, num_workers=2, cpus_per_worker=1, epochs=epochs,
                 max_failures=2)
    killed: dict = {}

    def kill_after_first_checkpoint():
        """Kill a worker once epoch 1 is logged: epoch 0's report (a barrier) and its checkpoint then completed."""
        client = MlflowClient(uri)
        deadline = time.time() + 400
        while time.time() < deadline:
            time.sleep(0.1)
            exp = client.get_experiment_by_name("train")
            runs = client.search_runs([exp.experiment_id]) if exp else []
            steps = [m.step for m in client.get_metric_history(runs[0].info.run_id, "val_f1_macro")] if runs else []
            if not steps or max(steps) < 1:
                continue
            workers = _ray_train_workers()
            if len(workers) == 2:
                killed.update(pid=workers[-1].pid)
                workers[-1].kill()  # SIGKILL: no chance to clean up, as when a machine disappears
                return

    killer = threading.Thread(target=kill_after_first_checkpoint, daemon=True)
    killer.start()
    result = fit(spec, census_params, tmp / "model")
    killer.join(timeout=5)
    assert killed, "no worker was killed: training finished before the first checkpoint appeared"
    client = MlflowClient(uri)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    resumed = int(run.data.tags["resumed_from_epoch"])
    assert 1 <= resumed < epochs, resumed
    steps = {m.step for m in client.get_metric_history(result.run_id, "val_f1_macro")}
    assert steps == set(range(epochs))
    assert result.metrics["epochs_run"] == epochs
    assert "model/model.pt" in {a.path for a in client.list_artifacts(result.run_id, "model")}
