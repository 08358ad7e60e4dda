"""MLP baseline of the scTab paper (Methods "Multi-layer perceptron model")."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["MLP"]


class MLP(nn.Module):
    """n_hidden x [Linear -> BatchNorm1d -> SiLU -> Dropout] then Linear to the classes.

    Paper defaults: 8 hidden layers of 128 units, dropout 0.1.
    """

    def __init__(self, n_genes: int, n_classes: int, n_hidden: int = 8, hidden_size: int = 128, dropout: float = 0.1):
        super().__init__()
        if n_hidden < 0:
            raise ValueError(f"n_hidden must be >= 0, got {n_hidden}")
        self.hparams = dict(
            n_genes=n_genes, n_classes=n_classes, n_hidden=n_hidden,
            hidden_size=hidden_size, dropout=dropout,
        )
        layers: list[nn.Module] = []
        in_dim = n_genes
        for _ in range(n_hidden):
            layers += [
                nn.Linear(in_dim, hidden_size),
                nn.BatchNorm1d(hidden_size),
                nn.SiLU(),
                nn.Dropout(dropout),
            ]
            in_dim = hidden_size
        self.layers = nn.Sequential(*layers)
        self.head = nn.Linear(in_dim, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.layers(x))
