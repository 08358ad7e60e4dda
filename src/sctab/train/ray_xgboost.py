"""XGBoost data-parallel on Ray Train workers (the train stage's path; Tune trials fit in their own process).

At the paper's 15 M training cells one process cannot hold the embedding and its DMatrix, so each of
``models.xgboost.num_workers`` workers reads only its contiguous rows of the train and val embedding
(:func:`sctab.data.pca.load_embedding_shard`) and runs the one fitting function,
:func:`sctab.train.baselines.fit_xgboost_shard`. Ray Train's ``XGBoostTrainer`` (V2 API) starts XGBoost's
tracker and wraps every worker in the collective, so histograms and the validation loss (early stopping) are
all-reduced and all workers grow the same booster. Rank 0 reports it as ``model.ubj`` in a Ray Train
checkpoint; the driver loads it from there. One worker is the same code without a collective.

Per-round validation scores (``on_step``, what Tune's ASHA compares) are not reported on this path.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np

from sctab.data.store import Store
from sctab.models.xgboost_model import load_xgboost, save_xgboost
from sctab.train import ray_console
from sctab.train.baselines import (
    BaselineError,
    baseline_config,
    check_pca_dir,
    fit_xgboost_shard,
    peak_rss_mib,
    xgboost_result,
)
from sctab.train.spec import BaselineSpec

NODE_ID_BYTES = 28  # a Ray node id: 56 hex digits


def _gather(row: np.ndarray, rank: int, world_size: int) -> np.ndarray:
    """Every rank's ``row`` (same shape and dtype on all), stacked by rank, through XGBoost's all-reduce
    (each rank fills its own slot of zeros; the sum is the gather). No pickles cross between workers."""
    out = np.zeros((world_size, *row.shape), dtype=row.dtype)
    out[rank] = row
    if world_size == 1:
        return out
    from xgboost import collective

    return collective.allreduce(out.ravel(), collective.Op.SUM).reshape(out.shape)


def xgboost_worker(cfg: dict) -> None:
    """Entry point of each Ray Train XGBoost worker: fit on this rank's shard, report the booster from rank 0."""
    import ray
    import ray.train

    ray_console.quiet_worker()
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    t0 = time.perf_counter()
    booster = fit_xgboost_shard(cfg["pca_dir"], cfg["n_classes"], np.asarray(cfg["class_weights"], np.float32),
                                cfg["config"], rank, world)
    rss = _gather(np.array([peak_rss_mib()]), rank, world)[:, 0]
    node = np.frombuffer(bytes.fromhex(ray.get_runtime_context().get_node_id()), np.uint8)
    nodes = [bytes(r).hex() for r in _gather(node, rank, world)]
    metrics = {"worker_peak_rss_mib": [round(float(v), 1) for v in rss], "worker_nodes": nodes,
               "fit_seconds": time.perf_counter() - t0}
    if rank != 0:
        ray.train.report(metrics)  # a barrier: every rank reports once
        return
    with tempfile.TemporaryDirectory() as d:
        save_xgboost(booster, d)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))


def _use_gpu(device: str, num_workers: int, resources: dict) -> bool:
    """One GPU per worker when the device setting allows it and the cluster has enough; ``cuda`` without them
    is an error before any worker starts."""
    import torch

    if device == "cpu":
        return False
    enough = resources.get("GPU", 0) >= num_workers and torch.backends.cuda.is_built()
    if device.startswith("cuda") and not enough:
        raise BaselineError(f"models.xgboost.device is {device} but the Ray cluster has {resources.get('GPU', 0):g} "
                            f"GPU(s) for {num_workers} worker(s) (torch CUDA build: {torch.backends.cuda.is_built()});"
                            f" use device auto or cpu, or fewer workers")
    return enough


def run_xgboost_workers(pca_dir: str, n_classes: int, class_weights: np.ndarray, config: dict, *, name: str,
                        storage_path: str | Path, use_gpu: bool = False):
    """Fit on ``config["num_workers"]`` Ray Train XGBoost workers (Ray must be up); return (rank 0's booster,
    its report: each rank's peak RSS and node)."""
    from ray.train import CheckpointConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.xgboost import XGBoostTrainer

    num_workers = int(config.get("num_workers", 1))
    trainer = XGBoostTrainer(
        xgboost_worker,
        train_loop_config={"pca_dir": str(pca_dir), "n_classes": int(n_classes), "config": config,
                           "class_weights": np.asarray(class_weights, dtype=float).tolist()},
        scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=use_gpu,
                                     resources_per_worker={"CPU": int(config.get("nthread") or 1)}),
        run_config=RunConfig(name=name, storage_path=str(Path(storage_path).resolve()),
                             checkpoint_config=CheckpointConfig(num_to_keep=1),
                             logging_config=LoggingConfig(log_level=ray_console.driver_level()),
                             worker_runtime_env={"env_vars": {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}}),
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise BaselineError(f"Ray run {name} finished without the booster's checkpoint")
    with result.checkpoint.as_directory() as d:
        booster = load_xgboost(Path(d) / "model.ubj")
    return booster, dict(result.metrics)


def train_xgboost_on_ray(spec: BaselineSpec, *, name: str, storage_path: str | Path):
    """Fit XGBoost on ``num_workers`` Ray Train workers (RAY_ADDRESS, else a local Ray); return (classifier,
    info) as the in-process fit does, plus the worker count, each rank's peak RSS and the workers' nodes."""
    ray_console.prepare()  # before Ray's first import
    from sctab.train.ray_train import ensure_ray

    config = baseline_config(spec)
    check_pca_dir(spec)
    store = Store(spec.store)
    t0 = time.perf_counter()
    num_workers = int(config.get("num_workers", 1))
    need = num_workers * int(config.get("nthread") or 1)
    resources = ensure_ray()
    if not os.environ.get("RAY_ADDRESS") and resources.get("CPU", 0) < need:
        raise BaselineError(f"models.xgboost.num_workers x nthread = {need} CPUs but the local Ray has "
                            f"{resources.get('CPU', 0):g}; lower them in params.yaml or join a cluster (RAY_ADDRESS)")
    use_gpu = _use_gpu(str(config.get("device", "auto")), num_workers, resources)
    worker_config = config if use_gpu else {**config, "device": "cpu"}  # a worker without a GPU trains on the CPU
    booster, m = run_xgboost_workers(spec.pca_dir, store.n_classes, store.class_weights(), worker_config, name=name,
                                     storage_path=storage_path, use_gpu=use_gpu)
    clf, info = xgboost_result(spec, config, store, booster, num_workers=num_workers,
                               worker_peak_rss_mib=list(m["worker_peak_rss_mib"]))
    info["worker_nodes"] = list(m["worker_nodes"])
    info["worker_device"] = "cuda" if use_gpu else "cpu"
    info["train_seconds"] = time.perf_counter() - t0
    return clf, info
