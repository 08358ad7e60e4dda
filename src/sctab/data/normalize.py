"""Size-factor normalisation to ``target_sum`` counts per cell followed by log1p (Methods).

The one implementation: the store writer (training data) and annotation/serving (a user's cells) both call
:func:`normalize_log1p`, so a model sees the same numbers in training and in use. Row sums and scaling are
taken in float64 and the result rounded once to float32; sparse input is scaled on its non-zeros only
(log1p(0) = 0), which gives bit-for-bit the dense path's values.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

__all__ = ["normalize_log1p", "cell_sums"]


def cell_sums(counts) -> np.ndarray:
    """Per-cell total counts (float64)."""
    if sp.issparse(counts):
        return np.asarray(counts.sum(axis=1, dtype=np.float64)).ravel()
    return np.asarray(counts).sum(axis=1, dtype=np.float64)


def normalize_log1p(counts, target_sum: float = 10_000.0, *, allow_empty: bool = False) -> np.ndarray:
    """Dense float32 ``log1p(counts / rowsum * target_sum)``.

    Cells without counts cannot be size-factor normalised: an error, or all-zero rows with ``allow_empty``.
    """
    sums = cell_sums(counts)
    empty = sums <= 0
    if empty.any() and not allow_empty:
        raise ValueError(f"{int(empty.sum())} cell(s) have no counts; they cannot be size-factor normalised")
    scale = np.zeros_like(sums)
    scale[~empty] = target_sum / sums[~empty]
    if sp.issparse(counts):
        csr = sp.csr_matrix(counts)
        if not csr.has_canonical_format:
            csr = csr.copy()
            csr.sum_duplicates()
        data = csr.data.astype(np.float64) * np.repeat(scale, np.diff(csr.indptr))
        np.log1p(data, out=data)
        return sp.csr_matrix((data.astype(np.float32), csr.indices, csr.indptr), shape=csr.shape).toarray()
    out = np.asarray(counts, dtype=np.float64) * scale[:, None]
    np.log1p(out, out=out)
    return out.astype(np.float32)
