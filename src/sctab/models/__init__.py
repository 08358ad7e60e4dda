"""sctab.models: scTab's TabNet (exact 1.5-entmax masks), the MLP and linear baselines,
and import of published scTab checkpoints."""

from __future__ import annotations

import inspect

from torch import nn

from .checkpoint import load_published_sctab, save_published_style_checkpoint
from .entmax import Entmax15, Sparsemax, entmax15, entmax15_sort, sparsemax
from .linear import LinearModel
from .mlp import MLP
from .tabnet import TabNet

__all__ = [
    "TabNet",
    "MLP",
    "LinearModel",
    "entmax15",
    "entmax15_sort",
    "sparsemax",
    "Entmax15",
    "Sparsemax",
    "load_published_sctab",
    "save_published_style_checkpoint",
    "build_model",
    "MODEL_NAMES",
]

MODEL_NAMES = ("sctab", "mlp", "linear")


def build_model(name: str, n_genes: int, n_classes: int, **hparams) -> nn.Module:
    """Build "sctab" (TabNet), "mlp" or "linear" for n_genes inputs and n_classes outputs.

    ``hparams`` are the model's architecture arguments (e.g. n_d, n_a for
    sctab; n_hidden, hidden_size, dropout for mlp); unknown ones raise a
    TypeError naming the accepted ones so typos in configs do not pass silently.
    """
    key = name.lower().strip()
    if key in ("sctab", "tabnet"):
        cls, args = TabNet, {"input_dim": n_genes, "output_dim": n_classes}
    elif key == "mlp":
        cls, args = MLP, {"n_genes": n_genes, "n_classes": n_classes}
    elif key == "linear":
        cls, args = LinearModel, {"n_genes": n_genes, "n_classes": n_classes}
    else:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(MODEL_NAMES)}")
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", *args)]
    unknown = sorted(set(hparams) - set(accepted))
    if unknown:
        raise TypeError(f"{name}: unknown hyperparameters {unknown}; accepted: {accepted}")
    return cls(**args, **hparams)
