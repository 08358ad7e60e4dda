"""Ray Train: the shared loop on ``num_workers`` DDP workers (gloo on CPU, NCCL on GPU).

Local Ray (with its dashboard on 127.0.0.1) by default; ``RAY_ADDRESS`` joins an existing cluster.
Checkpoints go through ``ray.train.report`` into ``<project>/ray_results``; ``FailureConfig`` restarts
lost workers from the last one. Rank 0 logs each epoch to the MLflow run the driver opened.
"""

from __future__ import annotations

import math
import os
import socket
from pathlib import Path

import torch

from sctab.config import ConfigError
from sctab.models.device import DeviceError, cuda_hint, device_name, torch_build
from sctab.params_schema import section
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
    """Whether each Ray Train worker gets a GPU: when the device policy allows it (``train.device`` not cpu,
    ``use_gpu`` not false), the cluster has a GPU per worker and torch can use CUDA. The driver may be a head
    node without a GPU, so the torch *build* is checked here (workers run the same environment); asking for
    GPUs (device cuda, or use_gpu true) where there are none is an error before any worker starts."""
    if spec.device == "cpu" or spec.use_gpu is False:
        return False
    gpus = resources.get("GPU", 0)
    wanted = spec.device.startswith("cuda") or spec.use_gpu is True
    if not torch.backends.cuda.is_built():
        if wanted:
            raise DeviceError(f"Ray Train workers were asked to use GPUs (train.device {spec.device}, use_gpu "
                              f"{spec.use_gpu}), but {torch_build()}: {cuda_hint()}")
        return False
    if gpus < spec.num_workers:
        if wanted:
            raise TrainingError(f"train.device {spec.device} / use_gpu {spec.use_gpu} needs one GPU per worker "
                                f"({spec.num_workers}), but the Ray cluster has {gpus:g}; lower train.num_workers, "
                                f"add GPU nodes or set train.device: auto")
        return False
    return True


#: models whose trials can use a GPU, and where their device setting lives
_GPU_MODELS = {"xgboost": "models.xgboost.device"}


def model_device_setting(params: dict, model: str) -> str:
    """The device setting that governs ``model``: ``train.device`` for the neural kinds, XGBoost's own
    ``models.xgboost.device``; ``cpu`` for models that never use a GPU (CellTypist)."""
    from sctab.models import is_neural

    if is_neural(model):
        return str(section(params, "train.device"))
    if model in _GPU_MODELS:
        return str(section(params, _GPU_MODELS[model]))
    return "cpu"


def trial_resources(setting, device: str, cpus: int, max_concurrent: int, resources: dict, where: str) -> dict:
    """Ray resources of one Tune trial or sweep point: ``cpus``, plus a GPU share.

    ``setting`` is ``gpus_per_trial``: a number (a fraction shares one GPU between trials), or ``auto`` =
    the cluster's GPUs split over the ``max_concurrent`` trials (at most one each) when ``device`` allows a
    GPU and torch is a CUDA build, else none. A trial given no GPU sees none (Ray hides the others), so the
    device policy inside it resolves ``auto`` to the CPU: trials and final training run where they are told."""
    gpus_in_cluster = float(resources.get("GPU", 0))
    if setting == "auto":
        if device == "cpu" or not gpus_in_cluster or not torch.backends.cuda.is_built():
            gpus = 0.0
        else:
            gpus = min(1.0, math.floor(gpus_in_cluster / max(1, max_concurrent) * 1e4) / 1e4)
    else:
        if isinstance(setting, bool) or not isinstance(setting, (int, float)) or setting < 0:
            raise ConfigError(f"{where}.gpus_per_trial must be auto or a number >= 0, got {setting!r}")
        gpus = float(setting)
        if gpus > 0 and not torch.backends.cuda.is_built():
            raise DeviceError(f"{where}.gpus_per_trial is {gpus:g}, but {torch_build()}: "
                              f"{cuda_hint()}")
        if gpus > gpus_in_cluster:
            raise ConfigError(f"{where}.gpus_per_trial is {gpus:g}, but the Ray cluster has {gpus_in_cluster:g} "
                              f"GPU(s); lower it (0 = CPU only) or use auto")
        if gpus > 1 and gpus != int(gpus):
            raise ConfigError(f"{where}.gpus_per_trial above 1 must be a whole number, got {gpus:g}")
    return {"cpu": int(cpus), "gpu": gpus} if gpus else {"cpu": int(cpus)}


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
        TrackedRun.attach(config["run_id"], config["tracking_uri"]).set_tags(
            worker_nodes=",".join(nodes), worker_device=f"{session.device} ({device_name(session.device)})",
            precision=spec.precision)
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
