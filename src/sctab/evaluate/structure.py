"""How well labelled cell types separate in an embedding: kNN label purity against its chance level.

One number a reader can check beside a t-SNE that looks like one cloud: the share of each cell's nearest
neighbours that carry its label, and the same for neighbours drawn at random (the sum of squared label shares).
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def knn_purity(embedding: np.ndarray, labels, k: int = 15) -> tuple[float, float]:
    """Mean share of each cell's k nearest neighbours with its label, and the same for random neighbours."""
    from sklearn.neighbors import NearestNeighbors

    labels = np.asarray(labels).astype(str)
    if len(labels) != embedding.shape[0]:
        raise ValueError(f"{len(labels)} labels for {embedding.shape[0]} cells")
    k = min(k, embedding.shape[0] - 1)
    idx = NearestNeighbors(n_neighbors=k + 1).fit(embedding).kneighbors(embedding, return_distance=False)[:, 1:]
    purity = float((labels[idx] == labels[:, None]).mean())
    shares = pd.Series(labels).value_counts(normalize=True).to_numpy()
    return purity, float((shares ** 2).sum())
