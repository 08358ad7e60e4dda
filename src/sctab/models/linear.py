"""Linear baseline of the scTab paper: one weight matrix and bias (logistic regression)."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["LinearModel"]


class LinearModel(nn.Module):
    """Logits = x W^T + b over all genes."""

    def __init__(self, n_genes: int, n_classes: int):
        super().__init__()
        self.hparams = dict(n_genes=n_genes, n_classes=n_classes)
        self.linear = nn.Linear(n_genes, n_classes, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)
