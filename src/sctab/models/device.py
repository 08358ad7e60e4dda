"""The one device policy: ``auto`` | ``cpu`` | ``cuda`` (``cuda:N``) -> the torch device every part runs on.

Training, evaluation, the registry's pyfunc, serving, ``sctab annotate`` and XGBoost all resolve their setting
here, so they cannot disagree on what ``auto`` means: the GPU when torch can use one, else the CPU. Asking
for ``cuda`` where torch cannot use it is an error that names the installed torch build and how to get a
CUDA one, instead of a failure deep inside a worker. Also here: the host -> device copy that keeps a GPU fed
(pinned memory, non-blocking) and the autocast context of the ``bf16-mixed`` precision.
"""

from __future__ import annotations

import contextlib

import torch

from sctab.config import ConfigError, check_device, check_precision

__all__ = ["DeviceError", "cuda_hint", "check_cuda_build", "resolve_device", "cuda_usable", "torch_build",
           "to_device", "model_input", "autocast", "device_name"]

#: how to get a CUDA build of the pinned torch (PyTorch's own wheel index; pick the CUDA version of the driver)
CUDA_HINT = ("install a CUDA build of the same torch, e.g. `pip install torch=={v} --index-url "
             "https://download.pytorch.org/whl/cu128` (see https://pytorch.org/get-started/locally/), "
             "or set device: auto / --device auto to run on the CPU")


def cuda_hint() -> str:
    """How to get a CUDA build of the installed torch version (its release, without a local tag like +cpu)."""
    return CUDA_HINT.format(v=torch.__version__.split("+")[0])


class DeviceError(ConfigError):
    """The configuration asks for a device that this torch cannot use."""


def cuda_usable() -> bool:
    """torch was built with CUDA and sees at least one GPU."""
    return torch.backends.cuda.is_built() and torch.cuda.is_available()


def torch_build() -> str:
    """The installed torch in words: version, and the CUDA it was built for (None for a CPU-only build)."""
    if torch.version.cuda is None:
        return f"torch {torch.__version__} is a CPU-only build (torch.version.cuda is None)"
    return f"torch {torch.__version__} is built for CUDA {torch.version.cuda}"


def resolve_device(setting: str | torch.device | None = "auto") -> torch.device:
    """The device ``setting`` means here: auto -> cuda when :func:`cuda_usable`, else cpu.

    DeviceError when ``cuda`` is asked for and torch cannot use it: the message says why (a CPU-only torch,
    or a CUDA torch that sees no GPU) and what to do."""
    if isinstance(setting, torch.device):
        setting = str(setting)
    text = check_device("auto" if setting is None else setting)
    if text == "auto":
        return torch.device("cuda" if cuda_usable() else "cpu")
    if text == "cpu":
        return torch.device("cpu")
    if torch.version.cuda is None:
        raise DeviceError(f"device {text!r} was asked for, but {torch_build()}: {cuda_hint()}")
    if not torch.cuda.is_available():
        raise DeviceError(f"device {text!r} was asked for and {torch_build()}, but it sees no GPU "
                          f"(torch.cuda.is_available() is False): check `nvidia-smi`, the driver and "
                          f"CUDA_VISIBLE_DEVICES, or set device: auto / cpu")
    dev = torch.device(text)
    if dev.index is not None and dev.index >= torch.cuda.device_count():
        raise DeviceError(f"device {text!r} was asked for, but torch sees {torch.cuda.device_count()} GPU(s)")
    return dev


def check_cuda_build(setting: str | None, where: str = "device") -> None:
    """DeviceError unless ``setting`` is cpu/auto or torch is a CUDA build: what a driver can check for workers
    on other nodes (they run the same environment; whether they have a GPU is Ray's to say)."""
    text = check_device("auto" if setting is None else setting, where)
    if text.startswith("cuda") and torch.version.cuda is None:
        raise DeviceError(f"{where} {text!r} was asked for, but {torch_build()}: {cuda_hint()}")


def device_name(device: torch.device) -> str:
    """``NVIDIA H100 80GB HBM3`` for a GPU, ``cpu`` otherwise (for bench headers and run tags)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return "cpu"


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``t`` on ``device``; a host tensor bound for a GPU goes through pinned memory and a non-blocking copy
    (the copy overlaps the GPU's work on the previous batch). Sparse CSR tensors travel as their three
    component arrays. On the CPU it is ``t`` itself."""
    if t.device == device or device.type != "cuda":
        return t.to(device)
    if t.layout == torch.sparse_csr:
        crow, col, val = (to_device(a, device) for a in (t.crow_indices(), t.col_indices(), t.values()))
        return torch.sparse_csr_tensor(crow, col, val, size=t.shape, check_invariants=False, device=device)
    if t.device.type == "cpu" and not t.is_pinned():
        t = t.pin_memory()
    return t.to(device, non_blocking=True)


def autocast(device: torch.device, precision: str | int = "32"):
    """The forward pass's autocast context: bf16 matmuls for ``bf16-mixed`` (CPU and CUDA), nothing for 32."""
    if check_precision(precision) == "bf16-mixed":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def model_input(x: torch.Tensor, device: torch.device, dense: bool) -> torch.Tensor:
    """A batch's ``x`` on ``device`` as the model takes it: a CSR batch is copied sparse (~10x fewer bytes)
    and densified there when ``dense`` (the MLP, the linear model, augmentation and training need dense)."""
    from sctab.models.tabnet_inputs import csr_to_dense  # scipy's C loop on the CPU: ~10x faster than to_dense()

    x = to_device(x, device)
    return csr_to_dense(x) if dense and x.layout == torch.sparse_csr else x
