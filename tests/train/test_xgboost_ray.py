"""XGBoost data-parallel on Ray: shards of the embedding, a 2-worker fit against the 1-worker fit, and the train
stage on a real two-node local cluster."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from sctab.data.pca import PCAError, load_embedding_shard, shard_range
from sctab.models.xgboost_model import XGBoostConfigError, check_config, predict_proba
from sctab.train.baselines import fit_xgboost_shard
from tests.paths import REPO_ROOT as REPO


@pytest.mark.parametrize("n_rows,world", [(10, 1), (10, 3), (7, 7), (1001, 4), (5, 2)])
def test_shards_cover_every_row_exactly_once(n_rows, world):
    ranges = [shard_range(n_rows, r, world) for r in range(world)]
    rows = np.concatenate([np.arange(a, b) for a, b in ranges])
    np.testing.assert_array_equal(rows, np.arange(n_rows))  # contiguous, in order, no gap, no overlap
    sizes = [b - a for a, b in ranges]
    assert max(sizes) - min(sizes) <= 1 and min(sizes) >= 1
    assert sizes == sorted(sizes, reverse=True), "the remainder goes to the first ranks"


def test_shard_range_rejects_what_cannot_be_split():
    with pytest.raises(PCAError, match="3 row.*4 workers"):
        shard_range(3, 0, 4)
    with pytest.raises(PCAError, match="rank 2 is outside 0..1"):
        shard_range(10, 2, 2)
    with pytest.raises(PCAError, match="world_size must be at least 1"):
        shard_range(10, 0, 0)
    with pytest.raises(PCAError, match="rank must be an integer"):
        shard_range(10, 0.5, 2)


def test_num_workers_is_checked():
    assert check_config({"num_workers": 2})["num_workers"] == 2
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(XGBoostConfigError, match="num_workers"):
            check_config({"num_workers": bad})


def _synthetic_pca(folder: Path, n_classes: int = 4, k: int = 8, seed: int = 0) -> Path:
    """train/val/test embeddings whose classes sit around well-separated centres (labels sorted, so contiguous
    shards see different class mixes: the collective has to combine them)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 4, size=(n_classes, k)).astype(np.float32)
    folder.mkdir(parents=True)
    for split, n in (("train", 1203), ("val", 301), ("test", 400)):
        y = np.sort(rng.integers(0, n_classes, n)).astype(np.int64)
        z = (centres[y] + rng.normal(0, 1, size=(n, k))).astype(np.float32)
        np.save(folder / f"{split}.npy", z)
        np.save(folder / f"{split}_cell_type.npy", y)
    return folder


def test_embedding_shards_concatenate_to_the_split(tmp_path):
    pca = _synthetic_pca(tmp_path / "pca")
    whole = (np.load(pca / "train.npy"), np.load(pca / "train_cell_type.npy"))
    parts = [load_embedding_shard(pca, "train", r, 3) for r in range(3)]
    assert all(type(x) is np.ndarray and x.flags.owndata for x, _ in parts), "shards are copies, not maps"
    np.testing.assert_array_equal(np.concatenate([x for x, _ in parts]), whole[0])
    np.testing.assert_array_equal(np.concatenate([y for _, y in parts]), whole[1])
    with pytest.raises(PCAError, match="1203 row.*2000 workers"):
        load_embedding_shard(pca, "train", 0, 2000)


def _macro_f1(booster, pca: Path, split: str, n_classes: int) -> float:
    from sklearn.metrics import f1_score

    x, y = np.load(pca / f"{split}.npy"), np.load(pca / f"{split}_cell_type.npy")
    return float(f1_score(y, predict_proba(booster, x, n_classes).argmax(1), average="macro"))


def test_two_workers_on_ray_match_one_worker(tmp_path, workdir):
    from sctab.train.ray_train import ensure_ray
    from sctab.train.ray_xgboost import run_xgboost_workers

    pca = _synthetic_pca(tmp_path / "pca")
    weights = np.array([1.0, 2.0, 0.5, 1.5])
    cfg = {"n_estimators": 40, "max_depth": 3, "eta": 0.3, "early_stopping_rounds": 5, "nthread": 1,
           "device": "cpu"}
    one = fit_xgboost_shard(str(pca), 4, weights, cfg)
    ensure_ray(num_cpus=2)
    two, report = run_xgboost_workers(pca, 4, weights, {**cfg, "num_workers": 2}, name="xgb-unit",
                                      storage_path=tmp_path / "ray_results")
    assert predict_proba(two, np.load(pca / "val.npy")[:5], 4).shape == (5, 4)  # same class count
    f1_one, f1_two = (_macro_f1(b, pca, "test", 4) for b in (one, two))
    assert f1_one > 0.9 and abs(f1_two - f1_one) <= 0.02, (f1_one, f1_two)
    assert len(report["worker_peak_rss_mib"]) == 2 and all(v > 50 for v in report["worker_peak_rss_mib"])
    assert len(report["worker_nodes"]) == 2


def _xgboost_stage(tmp: Path, params: dict, store_dir, pca_dir, env: dict) -> tuple[dict, float]:
    """`python pipelines/train.py --model xgboost` as DVC runs it; (report, wall seconds)."""
    (tmp / "params.yaml").write_text(yaml.safe_dump(params))
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, str(REPO / "pipelines" / "train.py"), "--model", "xgboost", "--params",
                        "params.yaml", "--store", str(store_dir), "--pca", str(pca_dir), "--out", "model", "--report",
                        "report.json"], cwd=tmp, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return json.loads((tmp / "report.json").read_text()), time.perf_counter() - t0


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_two_node_cluster_fits_xgboost_as_well_as_one_worker(census_params, store_dir, pca_dir, workdir):
    """The train stage against a running two-node cluster (RAY_ADDRESS), 2 workers, one per node, against the
    1-worker fit of the same stage code in this process."""
    from mlflow.tracking import MlflowClient

    from sctab.data.store import Store
    from sctab.models import load as load_model_folder
    from sctab.train.fitting import fit
    from sctab.train.spec import make_spec
    from tests.ray_cluster import CLIENT_ENV, LocalCluster

    tmp, uri = workdir
    params = {k: v for k, v in copy.deepcopy(census_params).items() if not k.startswith("_")}
    params["models"]["xgboost"].update({"num_workers": 2, "nthread": 1, "device": "cpu"})
    t0 = time.perf_counter()
    one = fit(make_spec(params, "xgboost", store=str(store_dir), pca_dir=str(pca_dir)), params).metrics
    one_s = time.perf_counter() - t0
    cluster = LocalCluster(n_nodes=2, cpus_per_node=1).start()
    try:
        env = {**os.environ, **CLIENT_ENV, "RAY_ADDRESS": cluster.address, "MLFLOW_TRACKING_URI": uri}
        report, two_s = _xgboost_stage(tmp, params, store_dir, pca_dir, env)
    finally:
        cluster.stop()
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("train").experiment_id],
                              order_by=["attributes.start_time DESC"])
    run = runs[0]
    nodes = run.data.tags["worker_nodes"].split(",")
    assert len(nodes) == 2 and len(set(nodes)) == 2, f"both workers on one node: {nodes}"
    rss = client.get_metric_history(run.info.run_id, "worker_peak_rss_mib")
    assert sorted(m.step for m in rss) == [0, 1] and all(m.value > 50 for m in rss)
    assert report["num_workers"] == 2 and len(load_model_folder(tmp / "model").classes) == Store(store_dir).n_classes
    print(f"\n1 worker (in process): val F1 {one['val_f1_macro']:.4f}, test F1 {one['test_f1_macro']:.4f}, "
          f"{one_s:.1f} s, peak RSS {one['worker_peak_rss_mib']} MiB; 2 workers (cluster stage): val F1 "
          f"{report['val_f1_macro']:.4f}, test F1 {report['test_f1_macro']:.4f}, {two_s:.1f} s (stage, with Ray "
          f"connect), per-rank peak RSS {[round(m.value, 1) for m in sorted(rss, key=lambda m: m.step)]} MiB, "
          f"rounds {report['best_rounds']}/{report['rounds_run']} vs {one['best_rounds']}/{one['rounds_run']}")
    assert report["test_f1_macro"] == pytest.approx(one["test_f1_macro"], abs=0.01)
