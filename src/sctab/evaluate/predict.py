"""Predictions of a trained model over a store split, streamed in batches."""

from __future__ import annotations

import numpy as np
import torch

from sctab.data.store import Store
from sctab.train.loop import model_outputs


@torch.no_grad()
def predict_split(model: torch.nn.Module, store: Store, split: str, *, batch_size: int = 4096,
                  backend: str = "stream", device: str | torch.device = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """(true codes, softmax probabilities) for every row of ``split`` in file order."""
    from sctab.data.loaders import make_loader

    model.eval().to(device)
    ys, ps = [], []
    for batch in make_loader(store, split, batch_size=batch_size, backend=backend, shuffle=False):
        logits, _ = model_outputs(model, batch.x.to(device))
        ps.append(torch.softmax(logits.float(), dim=1).cpu().numpy())
        ys.append(batch.y.numpy())
    if not ys:
        return np.zeros(0, np.int64), np.zeros((0, store.n_classes), np.float32)
    return np.concatenate(ys), np.concatenate(ps)
