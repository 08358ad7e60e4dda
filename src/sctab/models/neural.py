"""The neural kinds (scTab's TabNet, the MLP, the linear model) as torch modules and as a classifier."""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from sctab.models.classifier import Classifier, FeatureSpace
from sctab.models.device import model_input, resolve_device
from sctab.models.linear import LinearModel
from sctab.models.mlp import MLP
from sctab.models.tabnet import TabNet

__all__ = ["NEURAL_MODELS", "MODEL_NAMES", "build_model", "model_outputs", "takes_sparse", "TorchClassifier"]

#: torch module of each neural kind, with the names of its (genes, classes) arguments
NEURAL_MODELS: dict[str, tuple[type[nn.Module], str, str]] = {
    "sctab": (TabNet, "input_dim", "output_dim"),
    "mlp": (MLP, "n_genes", "n_classes"),
    "linear": (LinearModel, "n_genes", "n_classes"),
}
MODEL_NAMES = tuple(NEURAL_MODELS)  # the kinds the shared torch training loop trains


def build_model(name: str, n_genes: int, n_classes: int, **hparams) -> nn.Module:
    """Build "sctab" (TabNet), "mlp" or "linear" for n_genes inputs and n_classes outputs.

    ``hparams`` are the model's architecture arguments (e.g. n_d, n_a for sctab; n_hidden, hidden_size,
    dropout for mlp); unknown ones raise a TypeError naming the accepted ones so typos in configs do not
    pass silently.
    """
    key = name.lower().strip()
    if key == "tabnet":
        key = "sctab"
    if key not in NEURAL_MODELS:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(MODEL_NAMES)}")
    cls, genes_arg, classes_arg = NEURAL_MODELS[key]
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", genes_arg, classes_arg)]
    unknown = sorted(set(hparams) - set(accepted))
    if unknown:
        raise TypeError(f"{name}: unknown hyperparameters {unknown}; accepted: {accepted}")
    return cls(**{genes_arg: n_genes, classes_arg: n_classes}, **hparams)


def model_outputs(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(logits, auxiliary loss or None): scTab returns its mask-entropy term beside the logits."""
    out = model(x)
    if isinstance(out, tuple):
        return out[0], out[1]
    return out, None


def takes_sparse(model: nn.Module) -> bool:
    """The module reads a sparse CSR batch itself (scTab's TabNet); the others need it densified."""
    model = getattr(model, "module", model)  # DDP wraps the module
    return isinstance(model, TabNet)


@dataclass(eq=False)
class TorchClassifier(Classifier):
    """scTab (TabNet), the MLP and the linear model: a torch module whose softmax gives the probabilities."""

    kind: str  # type: ignore[misc]  - per instance: "sctab", "mlp" or "linear"
    module: nn.Module
    space: FeatureSpace
    config: dict = field(default_factory=dict)
    batch_size: int = 4096
    model_file: ClassVar[str] = "model.pt"

    @property
    def device(self) -> torch.device:
        p = next(self.module.parameters(), None)
        return p.device if p is not None else torch.device("cpu")

    def to(self, device: str | torch.device) -> TorchClassifier:
        """Move to ``device`` (``auto``, ``cpu``, ``cuda``: resolved by :mod:`sctab.models.device`)."""
        self.module.to(resolve_device(device))
        return self

    @torch.inference_mode()
    def predict_proba(self, x_log1p) -> np.ndarray:
        self._check_input(x_log1p)
        self.module.eval()
        device = self.device
        out = np.empty((x_log1p.shape[0], self.n_classes), dtype=np.float32)
        for i in range(0, x_log1p.shape[0], self.batch_size):
            # a host tensor on purpose: model_input pins it and copies it without blocking when bound for a GPU
            xb = torch.as_tensor(np.ascontiguousarray(x_log1p[i:i + self.batch_size], dtype=np.float32),
                                 device="cpu")
            logits, _ = model_outputs(self.module, model_input(xb, device, dense=True))
            out[i:i + len(xb)] = torch.softmax(logits.float(), dim=1).cpu().numpy()
        return out

    def save_model_file(self, folder: Path) -> None:
        torch.save({k: v.detach().cpu() for k, v in self.module.state_dict().items()}, folder / self.model_file)

    @classmethod
    def load_model_file(cls, folder: Path, space: FeatureSpace, meta: dict, *, device: str = "cpu",
                        trust_pickle: bool = False) -> TorchClassifier:
        arch = dict(meta.get("arch") or {})
        module = build_model(meta["model"], space.n_genes, space.n_classes, **arch)
        state = torch.load(folder / cls.model_file, map_location="cpu", weights_only=True)
        module.load_state_dict(state)
        return cls(kind=str(meta["model"]), module=module.to(resolve_device(device)).eval(), space=space,
                   config=arch)


