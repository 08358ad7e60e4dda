"""Raw counts read in the census's order, handed back in the store's (shuffled) order, through files on disk.

Why: the store is shuffled on disk, so a chunk of its rows holds cells from all over the census. Read in that
order, every chunk's cells lie in nearly every tile of the census's X (a sparse tile holds the counts of a few
dozen to a few hundred cells), so each chunk decompresses about the whole matrix: memory grows with the census
(~1.9 KB per cell at 1,500 genes, measured by `make bench-scale`) and time with chunks x census. Reading in
ascending soma_joinid order instead touches each tile about once; the spool then regroups the rows by their
place in the store, bucket by bucket, so the writer sees exactly the rows it saw before, in the same order.

Disk: the raw counts of one split (CSR; values as float32 when that is exact, as it is for integer counts
below 2**24), removed when the split is written. Memory: one chunk of counts at a time.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import scipy.sparse as sp

__all__ = ["CountSpool"]

_F32, _F64 = 1, 0


class CountSpool:
    """Rows of a (n_rows, n_genes) count matrix added in any order with their positions, read back by bucket:
    ``bucket(b)`` is rows ``b * bucket_rows`` .. ``(b + 1) * bucket_rows - 1`` in position order.

    One append-only file per bucket; each ``add`` appends to the files of the buckets its rows fall into."""

    def __init__(self, folder: str | Path, n_rows: int, bucket_rows: int, n_genes: int):
        if bucket_rows < 1:
            raise ValueError(f"bucket_rows must be >= 1, got {bucket_rows}")
        self.folder, self.n_rows, self.bucket_rows, self.n_genes = Path(folder), int(n_rows), int(bucket_rows), n_genes
        self.folder.mkdir(parents=True, exist_ok=False)
        self.added = np.zeros(len(self), dtype=np.int64)

    def __len__(self) -> int:
        return -(-self.n_rows // self.bucket_rows)

    def __enter__(self) -> CountSpool:
        return self

    def __exit__(self, *exc) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)

    def _path(self, b: int) -> Path:
        return self.folder / f"bucket-{b:06d}.bin"

    def add(self, positions: np.ndarray, counts) -> None:
        """Spool ``counts`` (CSR-able, one row per entry of ``positions``, its place in the output)."""
        positions = np.asarray(positions, dtype=np.int64)
        counts = sp.csr_matrix(counts)
        if counts.shape != (len(positions), self.n_genes):
            raise ValueError(f"counts of shape {counts.shape} for {len(positions)} positions x {self.n_genes} genes")
        if len(positions) and (positions.min() < 0 or positions.max() >= self.n_rows):
            raise ValueError(f"positions outside 0..{self.n_rows - 1}")
        buckets = positions // self.bucket_rows
        by_bucket = np.argsort(buckets, kind="stable")  # one sort, not a scan of the chunk per bucket
        present, starts = np.unique(buckets[by_bucket], return_index=True)
        ends = np.r_[starts[1:], len(by_bucket)]
        for b, lo, hi in zip(present, starts, ends):
            rows = by_bucket[lo:hi]
            part = counts[rows]
            data = part.data.astype(np.float64, copy=False)
            d32 = data.astype(np.float32)
            code, data = (_F32, d32) if np.array_equal(d32, data) else (_F64, data)
            head = np.array([len(rows), part.nnz, code], dtype=np.int64)
            with open(self._path(int(b)), "ab") as f:
                for arr in (head, positions[rows], part.indptr.astype(np.int64), part.indices.astype(np.int32), data):
                    f.write(np.ascontiguousarray(arr).tobytes())
            self.added[b] += len(rows)

    def bucket(self, b: int) -> sp.csr_matrix:
        """The bucket's rows in position order, float64 (as the counts reader returns them)."""
        expected = min(self.bucket_rows, self.n_rows - b * self.bucket_rows)
        if self.added[b] != expected:
            raise ValueError(f"spool bucket {b} holds {self.added[b]} of its {expected} rows")
        raw = self._path(b).read_bytes() if expected else b""
        pieces, pos = [], []
        off = 0
        while off < len(raw):
            n, nnz, code = np.frombuffer(raw, np.int64, 3, off)
            off += 24
            p = np.frombuffer(raw, np.int64, n, off)
            off += 8 * n
            indptr = np.frombuffer(raw, np.int64, n + 1, off)
            off += 8 * (n + 1)
            indices = np.frombuffer(raw, np.int32, nnz, off)
            off += 4 * nnz
            dt = np.float32 if code == _F32 else np.float64
            data = np.frombuffer(raw, dt, nnz, off).astype(np.float64)
            off += np.dtype(dt).itemsize * nnz
            pieces.append(sp.csr_matrix((data, indices, indptr), shape=(int(n), self.n_genes)))
            pos.append(p)
        if not pieces:
            return sp.csr_matrix((0, self.n_genes), dtype=np.float64)
        m = sp.vstack(pieces, format="csr")
        local = np.concatenate(pos) - b * self.bucket_rows
        order = np.argsort(local, kind="stable")
        if not np.array_equal(local[order], np.arange(expected)):
            raise ValueError(f"spool bucket {b}: positions are not each of 0..{expected - 1} once")
        return m[order]
