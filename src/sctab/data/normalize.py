"""Size-factor normalisation to `target_sum` counts per cell followed by log1p (Methods)."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp


def normalize_log1p(counts, target_sum: float = 10_000.0) -> np.ndarray:
    """Dense float32 log1p(counts / rowsum * target_sum); rows must have a positive sum."""
    if sp.issparse(counts):
        counts = sp.csr_matrix(counts, dtype=np.float64)
        sums = np.asarray(counts.sum(axis=1)).ravel()
        if (sums <= 0).any():
            raise ValueError(f"{int((sums <= 0).sum())} cell(s) have no counts; they cannot be size-factor normalised")
        scaled = sp.diags(target_sum / sums) @ counts
        out = scaled.toarray()
    else:
        counts = np.asarray(counts, dtype=np.float64)
        sums = counts.sum(axis=1)
        if (sums <= 0).any():
            raise ValueError(f"{int((sums <= 0).sum())} cell(s) have no counts; they cannot be size-factor normalised")
        out = counts * (target_sum / sums)[:, None]
    return np.log1p(out).astype(np.float32)
