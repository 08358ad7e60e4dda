"""CSRRows: rows of a CSR matrix held as numpy arrays, the sparse backend's unit of data.

The sparse loader shuffles, cuts and concatenates rows without ever materialising them dense; this module is
those row operations (and their counterparts for dense arrays, so a loader handles either the same way), apart
from the readers that produce them and the loaders that cut them into batches.
"""

from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np
import scipy.sparse as sp
import torch

# torch marks sparse CSR "beta"; we only build CSR tensors and hand them to torch.sparse.mm / to_dense
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")


class CSRRows:
    """Rows of a CSR matrix in numpy (indptr int64, indices int32, values float32): what the sparse backend
    shuffles and cuts into batches without ever materialising the dense rows."""

    __slots__ = ("indptr", "indices", "values", "n_cols")

    def __init__(self, indptr: np.ndarray, indices: np.ndarray, values: np.ndarray, n_cols: int):
        self.indptr, self.indices, self.values, self.n_cols = indptr, indices, values, int(n_cols)

    def __len__(self) -> int:
        return len(self.indptr) - 1

    @property
    def nnz(self) -> int:
        return int(self.indptr[-1] - self.indptr[0])

    def take(self, rows: np.ndarray) -> "CSRRows":
        """The given rows, in the given order (one vectorised gather of their non-zeros)."""
        rows = np.asarray(rows, dtype=np.int64)
        starts = self.indptr[rows]
        lengths = self.indptr[rows + 1] - starts
        ptr = np.zeros(len(rows) + 1, np.int64)
        np.cumsum(lengths, out=ptr[1:])
        pos = _positions(starts, lengths)
        return CSRRows(ptr, self.indices[pos], self.values[pos], self.n_cols)

    @staticmethod
    def gather(parts: Sequence["CSRRows"], rows: np.ndarray) -> "CSRRows":
        """Rows `rows` (positions in the concatenation of `parts`), in that order, copied row by row.

        One contiguous slice copy per row straight from the (memory-mapped) parts: ~5x faster here than
        concatenating and then gathering element-wise (2,000 non-zeros per row make the per-row Python
        step cheap next to the copy)."""
        rows = np.asarray(rows, dtype=np.int64)
        n_cols = parts[0].n_cols
        starts = np.concatenate([p.indptr[:-1] for p in parts])[rows]
        ends = np.concatenate([p.indptr[1:] for p in parts])[rows]
        group = np.repeat(np.arange(len(parts)), [len(p) for p in parts])[rows]
        ptr = np.zeros(len(rows) + 1, np.int64)
        np.cumsum(ends - starts, out=ptr[1:])
        indices = np.empty(int(ptr[-1]), parts[0].indices.dtype)
        values = np.empty(int(ptr[-1]), parts[0].values.dtype)
        src = [(p.indices, p.values) for p in parts]
        for g, a, z, o, q in zip(group.tolist(), starts.tolist(), ends.tolist(), ptr[:-1].tolist(),
                                 ptr[1:].tolist()):
            ind, val = src[g]
            indices[o:q] = ind[a:z]
            values[o:q] = val[a:z]
        return CSRRows(ptr, indices, values, n_cols)

    def slice(self, a: int, b: int) -> "CSRRows":
        """Rows a..b-1 as a view (indptr not rebased)."""
        return CSRRows(self.indptr[a:b + 1], self.indices, self.values, self.n_cols)

    @staticmethod
    def concat(parts: Sequence["CSRRows"]) -> "CSRRows":
        parts = [p for p in parts if len(p)] or list(parts[:1])
        if len(parts) == 1 and parts[0].indptr[0] == 0:
            return parts[0]
        ptrs, shift = [np.zeros(1, np.int64)], 0
        for p in parts:
            ptrs.append(p.indptr[1:] - p.indptr[0] + shift)
            shift += p.nnz
        return CSRRows(np.concatenate(ptrs), np.concatenate([p.indices[p.indptr[0]:p.indptr[-1]] for p in parts]),
                       np.concatenate([p.values[p.indptr[0]:p.indptr[-1]] for p in parts]), parts[0].n_cols)

    def to_dense(self) -> np.ndarray:
        """The rows as a dense float32 array, written by scipy's C loop (about 5x a numpy scatter through int64
        flat keys at 2,048 x 19,331; the store has no duplicate entries, which scipy would add up)."""
        sl = slice(int(self.indptr[0]), int(self.indptr[-1]))
        m = sp.csr_matrix((self.values[sl], self.indices[sl], self.indptr - self.indptr[0]),
                          shape=(len(self), self.n_cols), copy=False)
        return m.toarray().astype(np.float32, copy=False)

    def to_torch(self) -> torch.Tensor:
        """A torch sparse CSR tensor sharing (after rebasing) these arrays."""
        sl = slice(int(self.indptr[0]), int(self.indptr[-1]))
        itype = np.int32 if self.nnz < 2**31 else np.int64  # int32 indices: zero-copy from the store's
        ptr = (self.indptr - self.indptr[0]).astype(itype)
        return torch.sparse_csr_tensor(torch.from_numpy(ptr),
                                       torch.from_numpy(self.indices[sl].astype(itype, copy=False)),
                                       torch.from_numpy(self.values[sl]), size=(len(self), self.n_cols),
                                       check_invariants=False)


def _positions(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenation of arange(s, s + l) for each (s, l): a cumsum of steps, 1 inside a run and a jump at
    each run's start (cumsum releases the GIL, np.repeat does not: this runs in the read-ahead thread)."""
    total = int(lengths.sum())
    dt = np.int32 if total + int(starts.max(initial=0)) < 2**31 - 1 else np.int64  # half the bytes to move
    steps = np.ones(total, dt)
    nonempty = lengths > 0
    if not nonempty.any():
        return steps[:0]
    s, ln = starts[nonempty], lengths[nonempty]
    first = np.concatenate([[0], np.cumsum(ln)[:-1]])
    steps[first] = s - np.concatenate([[0], (s + ln)[:-1] - 1])
    steps[0] = s[0]
    return np.cumsum(steps, out=steps)


def slice_rows(v, a: int, b: int):
    """Rows a..b-1 of a CSRRows (a view) or an array."""
    return v.slice(a, b) if isinstance(v, CSRRows) else v[a:b]


def take_rows(v, rows: np.ndarray):
    """The given rows, in that order, of a CSRRows or an array."""
    return v.take(rows) if isinstance(v, CSRRows) else np.take(v, rows, axis=0)


def cat_rows(a, b):
    """The rows of ``a`` then those of ``b`` (both CSRRows or both arrays)."""
    return CSRRows.concat([a, b]) if isinstance(a, CSRRows) else np.concatenate([a, b])
