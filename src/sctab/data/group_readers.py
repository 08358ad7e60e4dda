"""Readers of one row group of a store split, with the checks training relies on: the dense parquet layout
(``GroupReader``, into preallocated arrays) and the sparse Arrow IPC layout (``SparseGroupReader``, as
memory-mapped CSRRows). The loaders decide which groups to read and when; these say how.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from sctab.data.batching import LoaderError
from sctab.data.checksum import ChecksumError, verify
from sctab.data.csr_rows import CSRRows, take_rows
from sctab.data.prefetch import will_need
from sctab.data.store import Store, StoreError, open_parquet


class GroupReader:
    """Reads one row group into preallocated arrays, checking what training relies on.

    X comes from the arrow ListArray's values buffer reshaped to (rows, n_genes) (no Python loop, no
    intermediate copy) after checking every row has n_genes values; cell_type codes are range-checked.
    """

    def __init__(self, store: Store, split: str, columns: tuple[str, ...]):
        self.store, self.split, self.columns = store, store.split(split), columns
        self.n_genes = store.n_genes
        self.n_classes = store.n_classes
        self._files: dict[Path, pq.ParquetFile] = {}
        if "X" in columns:
            raise LoaderError("`columns` names extra obs columns; X is always loaded (Batch.x)")
        self._read = ["X", "cell_type", *[c for c in columns if c != "cell_type"]]
        schema = pq.read_schema(self.split.files[0])
        missing = [c for c in columns if c not in schema.names]
        if missing:
            raise LoaderError(f"columns {missing} are not in {self.split.files[0]} (has {schema.names})")

    def read_into(self, g: int, sel: np.ndarray | None, out: dict[str, np.ndarray], at: int) -> int:
        path, index, _ = self.split.row_groups[g]
        try:
            if path not in self._files:
                self._files[path] = open_parquet(path)  # pages checked against their checksums
            tbl = self._files[path].read_row_group(index, columns=self._read)
        except Exception as e:
            raise StoreError(f"cannot read row group {index} of {path}: {e}") from e
        n = tbl.num_rows if sel is None else len(sel)
        col = tbl.column("X")
        x = col.chunk(0) if col.num_chunks == 1 else col.combine_chunks()  # one chunk per row group: no copy
        offsets = x.offsets.to_numpy()
        bad = np.flatnonzero(np.diff(offsets) != self.n_genes)
        if bad.size or x.null_count:
            r = int(bad[0]) if bad.size else 0
            raise StoreError(f"{path} row group {index}: row {r} of X has {int(offsets[r + 1] - offsets[r])} "
                             f"values (or is null), expected {self.n_genes} (the length of var.parquet)")
        dense = x.values.to_numpy(zero_copy_only=False)[offsets[0]:offsets[-1]].reshape(-1, self.n_genes)
        _take(dense, sel, out["x"][at:at + n])
        _take(tbl.column("cell_type").to_numpy().astype(np.int64, copy=False), sel, out["y"][at:at + n])
        y = out["y"][at:at + n]
        bad = np.flatnonzero((y < 0) | (y >= self.n_classes))
        if bad.size:
            raise LoaderError(f"{path} row group {index}: cell_type code {int(y[bad[0]])} outside "
                              f"[0, {self.n_classes}) at row {int(bad[0] if sel is None else sel[bad[0]])}")
        for c in self.columns:
            _take(tbl.column(c).to_numpy().astype(np.int64, copy=False), sel, out[c][at:at + n])
        return n

    def empty(self, n: int) -> dict[str, np.ndarray]:
        out = {"x": np.empty((n, self.n_genes), np.float32), "y": np.empty(n, np.int64)}
        out.update({c: np.empty(n, np.int64) for c in self.columns})
        return out


def _take(src: np.ndarray, sel: np.ndarray | None, out: np.ndarray) -> None:
    if sel is None:
        out[...] = src
    else:
        np.take(src, sel, axis=0, out=out)


class SparseGroupReader:
    """Reads one row group (record batch) of the sparse layout as CSRRows (+ labels), memory-mapped: no
    decoding, the non-zeros are copied once when a block is permuted. Checks what the dense reader checks.

    Each read maps the file anew and the map goes with the block's arrays, so the pages it touches are
    not held for the whole store."""

    def __init__(self, store: Store, split: str, columns: tuple[str, ...]):
        self.store, self.columns = store, columns
        self.split = store.sparse_split(split)
        self.n_genes, self.n_classes = store.n_genes, store.n_classes
        if "X" in columns:
            raise LoaderError("`columns` names extra obs columns; X is always loaded (Batch.x)")
        names = self._reader(self.split.files[0]).schema.names
        missing = [c for c in columns if c not in names]
        if missing:
            raise LoaderError(f"columns {missing} are not in {self.split.files[0]} (has {names})")

    @staticmethod
    def _reader(path: Path):
        """A fresh memory-mapped reader per call: thread-safe, and the map is dropped with the last array."""
        return pa.ipc.open_file(pa.memory_map(str(path)))

    def read(self, g: int, sel: np.ndarray | None) -> dict:
        path, index, _ = self.split.row_groups[g]
        try:
            batch, metadata = self._reader(path).get_batch_with_custom_metadata(index)
            will_need(batch)  # one read of the whole batch where its pages are not cached (sctab.data.prefetch)
            batch = verify(batch, metadata, f"{path}, record batch {index}")
        except ChecksumError as e:
            raise StoreError(str(e)) from e
        except Exception as e:
            raise StoreError(f"cannot read row group {index} of {path}: {e}") from e
        ind, val = batch.column("indices"), batch.column("values")
        ptr = ind.offsets.to_numpy()
        if ind.null_count or val.null_count or not np.array_equal(ptr, val.offsets.to_numpy()):
            raise StoreError(f"{path} row group {index}: `indices` and `values` differ in length (or are null)")
        indices = ind.values.to_numpy()
        if indices.size and (indices.min() < 0 or indices.max() >= self.n_genes):
            raise StoreError(f"{path} row group {index}: a gene index outside [0, {self.n_genes}) "
                             "(the length of var.parquet)")
        x = CSRRows(ptr.astype(np.int64), indices, val.values.to_numpy(), self.n_genes)
        y = batch.column("cell_type").to_numpy().astype(np.int64, copy=False)
        bad = np.flatnonzero((y < 0) | (y >= self.n_classes))
        if bad.size:
            raise LoaderError(f"{path} row group {index}: cell_type code {int(y[bad[0]])} outside "
                              f"[0, {self.n_classes}) at row {int(bad[0])}")
        out = {"x": x, "y": y, **{c: batch.column(c).to_numpy().astype(np.int64, copy=False)
                                  for c in self.columns}}
        if sel is not None:
            out = {k: take_rows(v, sel) for k, v in out.items()}
        return out
