"""A sweep on a real two-node Ray cluster loses a node mid-sweep and still completes.

`ray start --head` + `ray start --address` on 127.0.0.1 (tests/ray_cluster.py), one CPU each, so the grid's
trials spread over both nodes. The sweep runs as a user runs it (`RAY_ADDRESS=... pipelines/experiment.py`);
this test stops the worker node while a point trains there. Tune's FailureConfig retries the lost trial on the
surviving node from its last checkpoint; points that had finished are not trained again, now or on a re-run.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import time

import pytest
import yaml

from tests.paths import REPO_ROOT as REPO
from tests.ray_cluster import CLIENT_ENV, LocalCluster

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def _point_runs(uri: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("sweep-data-size")
    if exp is None:
        return client, []
    return client, client.search_runs([exp.experiment_id], filter_string="tags.role = 'point'", max_results=1000)


def test_sweep_completes_after_losing_a_node(census_params, store_dir, tracking, tmp_path):
    params = {k: v for k, v in copy.deepcopy(census_params).items() if not k.startswith("_")}
    params["experiments"].update({
        "epochs": 20, "max_concurrent": 2, "cpus_per_trial": 1, "max_failures": 2,
        "data_size": {"models": ["linear"], "schemes": ["cells", "donors"], "fractions": [50, 100]}})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    cmd = [sys.executable, str(REPO / "pipelines" / "experiment.py"), "data-size", "--params", "params.yaml",
           "--store", str(store_dir), "--augmentations", str(tmp_path / "unused"), "--out", "reports"]
    cluster = LocalCluster(n_nodes=2, cpus_per_node=1).start()
    killed: dict = {}
    try:
        nodes = cluster.alive_nodes()
        head = next(n["NodeID"] for n in nodes if "node:__internal_head__" in n["Resources"])
        (worker,) = [n["NodeID"] for n in nodes if n["NodeID"] != head]
        env = {**os.environ, **CLIENT_ENV, "RAY_ADDRESS": cluster.address, "MLFLOW_TRACKING_URI": tracking}
        _point_runs(tracking)  # create the sqlite tables now: two processes migrating one new db at once clash
        proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True)
        try:
            deadline = time.time() + 300
            while time.time() < deadline and proc.poll() is None and not killed:
                time.sleep(0.2)
                client, runs = _point_runs(tracking)
                for r in runs:
                    if r.info.status == "RUNNING" and r.data.tags.get("ray_node_id") == worker and len(
                            client.get_metric_history(r.info.run_id, "val_f1_macro")) >= 2:
                        cluster.stop_node(1)  # the whole node: raylet, its object store, the trial's process
                        killed.update(run_id=r.info.run_id, point=r.data.tags["point_key"], at=time.time())
                        break
            out, _ = proc.communicate(timeout=400)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, 9)
                proc.wait(timeout=30)
    finally:
        cluster.stop()
    assert killed, "the worker node never ran a point long enough to be stopped mid-point:\n" + out[-4000:]
    assert proc.returncode == 0, out[-5000:]

    client, runs = _point_runs(tracking)
    by_point: dict = {}
    for r in runs:
        by_point.setdefault(r.data.tags["point_key"], []).append(r)
    assert len(by_point) == 4
    # every point finished exactly once: nothing that had finished was trained again
    for key, rs in by_point.items():
        assert [r.info.status for r in rs].count("FINISHED") == 1, (key, [r.info.status for r in rs])
    # points ran on both nodes
    assert {r.data.tags["ray_node_id"] for r in runs} == {head, worker}
    # the lost point: its attempt on the stopped node is closed as FAILED, a second attempt finished on the
    # head, resumed from the checkpoint the first attempt left (so it did not start again at epoch 0)
    lost = {r.info.run_id: r for r in by_point[killed["point"]]}
    assert lost[killed["run_id"]].info.status == "FAILED"
    assert "attempt lost" in lost[killed["run_id"]].data.tags["error"]
    (retry,) = [r for r in lost.values() if r.info.status == "FINISHED"]
    assert retry.data.tags["ray_node_id"] == head and retry.info.start_time / 1000 > killed["at"] - 1
    assert retry.data.tags["resumed"] == "true"
    first_epoch = min(m.step for m in client.get_metric_history(retry.info.run_id, "val_f1_macro"))
    assert first_epoch >= 1, "the retried point started from scratch"
    # only the lost point has a second run
    assert sum(len(rs) for rs in by_point.values()) == 5
    assert (tmp_path / "reports" / "data-size" / "summary.csv").exists()

    # a re-run trains nothing: every point has its FINISHED run (no cluster needed for that)
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking}
    env.pop("RAY_ADDRESS", None)
    again = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=200)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "4 points: 4 already finished, 0 to train" in again.stdout
    assert len(_point_runs(tracking)[1]) == 5
