"""Ray Train: the shared loop on ``num_workers`` DDP workers (gloo on CPU, NCCL on GPU).

Local Ray (with its dashboard on 127.0.0.1) by default; ``RAY_ADDRESS`` joins an existing cluster.
Checkpoints go through ``ray.train.report`` into ``<project>/ray_results``; ``FailureConfig`` restarts
lost workers from the last one. Rank 0 logs each epoch to the MLflow run the driver opened.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import torch

from sctab.tracking import TrackedRun
from sctab.train import ray_console
from sctab.train.loop import EpochLogger, TrainingError, load_checkpoint_dir, run_training
from sctab.train.ray_sessions import remove_stale_sessions
from sctab.train.spec import TrainSpec

#: Ray's own default; the next free one when another Ray holds it
DASHBOARD_PORT = 8265


def ensure_ray(num_cpus: int | None = None) -> dict:
    """Connect to ``RAY_ADDRESS`` or start a local Ray (with its dashboard on 127.0.0.1); return the cluster's
    resources. The first start in a process prints the dashboard's address."""
    ray_console.prepare()
    import ray

    if not ray.is_initialized():
        address = os.environ.get("RAY_ADDRESS") or None
        # the dashboard also serves the State API that Ray Train's placement-group cleaner polls
        kwargs = dict(address=address, include_dashboard=True, dashboard_host="127.0.0.1", log_to_driver=True,
                      configure_logging=True, logging_level=ray_console.driver_level())
        if address is None:
            remove_stale_sessions()  # folders of local Rays that are gone
            # Ray's State API client finds "its" cluster by scanning for GCS processes, which fails when other
            # local Rays run beside this one (tests, other users): tell every process of ours where to ask
            port = _free_port(DASHBOARD_PORT)
            kwargs.update(num_cpus=num_cpus, object_store_memory=256 * 1024 ** 2, dashboard_port=port,
                          runtime_env={"env_vars": {"RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{port}"}})
        ray_console.quiet_driver()
        ctx = ray.init(**kwargs)
        url = getattr(ctx, "dashboard_url", None)
        if url:
            print(f"Ray dashboard: http://{url} (while this process runs)", flush=True)
    return ray.cluster_resources()


def _free_port(first: int, tries: int = 100) -> int:
    """The first port from ``first`` on that nothing listens on at 127.0.0.1."""
    for port in range(first, first + tries):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise TrainingError(f"no free port for the Ray dashboard in {first}-{first + tries - 1} on 127.0.0.1")


def _use_gpu(spec: TrainSpec, resources: dict) -> bool:
    if spec.use_gpu == "auto":
        return resources.get("GPU", 0) >= spec.num_workers
    return bool(spec.use_gpu)


class RaySession:
    """The loop's view of a Ray Train worker."""

    def __init__(self):
        import ray.train

        ctx = ray.train.get_context()
        self.rank, self.world_size = ctx.get_world_rank(), ctx.get_world_size()
        from ray.train.torch import get_device

        self.device = get_device()

    def load_state(self):
        import ray.train

        ckpt = ray.train.get_checkpoint()
        if ckpt is None:
            return None
        with ckpt.as_directory() as d:
            return load_checkpoint_dir(d)

    def wrap(self, model):
        from ray.train.torch import prepare_model

        return prepare_model(model, move_to_device=False) if self.world_size > 1 else model

    def all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        if self.world_size > 1:
            import torch.distributed as dist

            dist.all_reduce(t)
        return t

    def report(self, metrics, checkpoint_dir):
        import ray.train

        ckpt = ray.train.Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir is not None else None
        ray.train.report(metrics, checkpoint=ckpt)

    def node_ids(self) -> list[str]:
        """Every rank's Ray node id (gathered), so a run can show where it ran."""
        import ray

        me = ray.get_runtime_context().get_node_id()
        if self.world_size == 1:
            return [me]
        import torch.distributed as dist

        out: list = [None] * self.world_size
        dist.all_gather_object(out, me)
        return out


def _mlflow_logger(tracking_uri: str, run_id: str, label: str) -> EpochLogger:
    """Rank 0's per-epoch hook: a progress line on the console and the epoch's metrics in the driver's run."""
    run = TrackedRun.attach(run_id, tracking_uri)

    def log_resume(epoch: int) -> None:
        print(f"[{label}] resumed from the last checkpoint at epoch {epoch}", flush=True)
        run.set_tags(resumed_from_epoch=epoch)

    return EpochLogger(log_epoch=run.epoch_printer(label), log_resume=log_resume)


def train_worker(config: dict) -> None:
    """Entry point of each Ray Train worker."""
    ray_console.quiet_worker()
    torch.set_num_threads(int(config["spec"]["cpus_per_worker"]))
    spec = TrainSpec.from_dict(config["spec"])
    session = RaySession()
    nodes = session.node_ids()
    logger = EpochLogger()
    if session.rank == 0 and config.get("run_id"):
        logger = _mlflow_logger(config["tracking_uri"], config["run_id"], f"{spec.model} seed {spec.seed}")
        TrackedRun.attach(config["run_id"], config["tracking_uri"]).set_tags(worker_nodes=",".join(nodes))
    run_training(spec, session, logger)


def run_on_ray(spec: TrainSpec, *, name: str, storage_path: str | Path, run_id: str | None = None,
               tracking_uri: str | None = None):
    """Fit with Ray Train; return (Ray Result, folder of the last checkpoint)."""
    ray_console.prepare()  # before Ray's first import
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    resources = ensure_ray()
    need = spec.num_workers * spec.cpus_per_worker
    if not os.environ.get("RAY_ADDRESS") and resources.get("CPU", 0) < need:
        raise TrainingError(f"train.num_workers x train.cpus_per_worker = {need} CPUs but the local Ray has "
                            f"{resources.get('CPU', 0):g}; lower them in params.yaml or join a cluster (RAY_ADDRESS)")
    trainer = TorchTrainer(
        train_worker,
        train_loop_config={"spec": spec.to_dict(), "run_id": run_id, "tracking_uri": tracking_uri},
        scaling_config=ScalingConfig(num_workers=spec.num_workers, use_gpu=_use_gpu(spec, resources),
                                     resources_per_worker={"CPU": spec.cpus_per_worker}),
        run_config=RunConfig(name=name, storage_path=str(Path(storage_path).resolve()),
                             failure_config=FailureConfig(max_failures=spec.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=spec.checkpoints_to_keep),
                             logging_config=LoggingConfig(log_level=ray_console.driver_level()),
                             # progress lines go straight to the console instead of through Ray Train's logger
                             worker_runtime_env={"env_vars": {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}}),
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise TrainingError(f"Ray run {name} finished without a checkpoint")
    return result


def restore_best(result) -> tuple[dict, dict]:
    """(final training state, best weights) from a Ray result's last checkpoint."""
    with result.checkpoint.as_directory() as d:
        return load_checkpoint_dir(d)  # checks both files are there
