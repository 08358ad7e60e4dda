"""Mini-batch loaders over a store split: one interface, four backends that yield the same batches.

Why four: "stream" reads parquet row groups on the fly, so memory stays bounded whatever the store's size
(the published train split is 15 M cells x 19,331 genes, about 1.2 TB dense); "sparse" does the same from
the store's sparse layout (`sparse/`, CSR-like indices + values, see sctab.data.store), which is ~10x less
to read and decode and is the fast path; "memory" holds a small split in RAM and skips re-decoding parquet
every epoch; "merlin" is the reference's loader (merlin-dataloader, optional extra `sctab[merlin]`, in its
own venv: `make merlin-env`), kept to compare.

`x_format` says what `Batch.x` is: "dense" (default, (b, n_genes) float32) or "csr" (a torch sparse CSR
tensor of the same values, which TabNet's first layers consume directly; densifying 2,048 x 19,331 floats
per batch costs more than reading them). Every backend and format gives the same rows, order and values.

Shuffling is a block shuffle, as in the reference: the split is written shuffled on disk, so permuting
row groups and then rows inside a block of `block_row_groups` row groups gives well-mixed batches while
reading whole row groups. The plan of an epoch (`epoch_plan`) is a pure function of (seed, epoch, rank,
world_size) shared by all backends, so they agree batch for batch and runs are reproducible.

This module imports only numpy, pyarrow, torch and sctab.data.store (no mlflow, ray, census stack), so it
also works in the slim merlin venv.
"""

from __future__ import annotations

import math
import os
import sys
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import scipy.sparse as sp
import torch

from sctab.data.checksum import ChecksumError, verify
from sctab.data.prefetch import will_need
from sctab.data.store import Store, StoreError, open_parquet

# torch marks sparse CSR "beta"; we only build CSR tensors and hand them to torch.sparse.mm / to_dense
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")

BACKENDS = ("stream", "memory", "merlin", "sparse")
X_FORMATS = ("dense", "csr")


class LoaderError(ValueError):
    """Bad loader arguments or data that must not be trained on silently."""


class MerlinNotInstalled(LoaderError, ImportError):
    """The merlin backend was asked for in an environment without merlin-dataloader."""


@dataclass
class Batch:
    x: torch.Tensor  # (b, n_genes) float32, contiguous; or torch.sparse_csr with x_format="csr"
    y: torch.Tensor  # (b,) int64 cell_type codes
    obs: dict[str, torch.Tensor] = field(default_factory=dict)  # extra `columns`, int64

    def __len__(self) -> int:
        return int(self.y.shape[0])


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


#: niceness of the read-ahead threads (Linux: per thread)
READ_AHEAD_NICENESS = 10


def background_priority() -> None:
    """Lower the calling thread's CPU priority (Linux; elsewhere nothing): the read-ahead threads then take
    the cores the training step's threads leave, instead of preempting one of them. A parallel torch kernel
    waits for its slowest thread, so a read-ahead thread scheduled in its place stalled the whole step: the
    loader cost about 10% of a 2-core training step that way, against about 2% of its CPU time."""
    if sys.platform.startswith("linux") and hasattr(os, "setpriority"):
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), READ_AHEAD_NICENESS)
        except OSError:  # not permitted (a container's seccomp policy, say): the default priority
            pass


def _slice_rows(v, a: int, b: int):
    return v.slice(a, b) if isinstance(v, CSRRows) else v[a:b]


def _take_rows(v, rows: np.ndarray):
    return v.take(rows) if isinstance(v, CSRRows) else np.take(v, rows, axis=0)


def _cat_rows(a, b):
    return CSRRows.concat([a, b]) if isinstance(a, CSRRows) else np.concatenate([a, b])


# ------------------------------------------------------------------------------------------- the plan
@dataclass(frozen=True)
class Block:
    """Row groups read together; their rows are concatenated (group order, kept rows ascending) then
    permuted by `order()`."""

    groups: tuple[int, ...]  # indices into StoreSplit.row_groups, in read order
    select: tuple[np.ndarray | None, ...]  # per group: rows kept (positions inside the group); None = all
    n_rows: int
    perm_key: tuple[int, ...] | None  # seeds the in-block permutation; None = no shuffle

    def order(self) -> np.ndarray:
        """Computed on demand, so a plan for millions of rows costs no memory up front."""
        if self.perm_key is None:
            return np.arange(self.n_rows)
        return np.random.default_rng(self.perm_key).permutation(self.n_rows)


def group_selections(sizes: Sequence[int], rows: np.ndarray | None) -> list[np.ndarray | None]:
    """Per row group, the kept rows (positions inside the group; None = all). `rows`: sorted split positions."""
    if rows is None:
        return [None] * len(sizes)
    starts = np.concatenate([[0], np.cumsum(sizes)])
    bounds = np.searchsorted(rows, starts)
    out = []
    for g, n in enumerate(sizes):
        sel = rows[bounds[g]:bounds[g + 1]] - starts[g]
        out.append(None if len(sel) == n else sel)
    return out


def epoch_plan(row_groups: Sequence, rows_subset: np.ndarray | None, seed: int, epoch: int, rank: int,
               world_size: int, block_row_groups: int, shuffle: bool) -> list[Block]:
    """The blocks one rank reads in one epoch.

    `row_groups`: StoreSplit.row_groups ((path, index, rows) tuples) or just the row counts.
    Row groups without a selected row are dropped before sharding; the rest are (when `shuffle`) permuted
    with a generator seeded by (seed, epoch), identical on every rank, and dealt round-robin
    (perm[rank::world_size]): every row is seen exactly once per epoch across ranks.
    """
    sizes = [int(g[-1]) if isinstance(g, tuple) else int(g) for g in row_groups]
    sel = group_selections(sizes, rows_subset)
    count = [sizes[g] if s is None else len(s) for g, s in enumerate(sel)]
    eligible = np.array([g for g in range(len(sizes)) if count[g] > 0], dtype=np.int64)
    if shuffle:
        eligible = np.random.default_rng([seed, epoch, 0]).permutation(eligible)
    mine = eligible[rank::world_size]
    blocks = []
    for b, start in enumerate(range(0, len(mine), block_row_groups)):
        groups = tuple(int(g) for g in mine[start:start + block_row_groups])
        key = (seed, epoch, 1, rank, b) if shuffle else None
        blocks.append(Block(groups, tuple(sel[g] for g in groups), sum(count[g] for g in groups), key))
    return blocks


# ------------------------------------------------------------------------------------------- reading
class _GroupReader:
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


# ------------------------------------------------------------------------------------------- loaders
#: `_fetch` returns this as `index` when its arrays are already the block's rows in the epoch's order
ORDERED = object()


class Loader:
    """Common part: arguments, plan, batch cutting. Backends say where a block's rows are (`_fetch`)."""

    def __init__(self, store: Store, split: str, *, batch_size: int, shuffle: bool, seed: int, rank: int,
                 world_size: int, block_row_groups: int, rows: np.ndarray | None, drop_last: bool,
                 columns: tuple[str, ...], x_format: str = "dense"):
        self.store, self.split_name = store, split
        self.x_format = x_format
        self.split = store.split(split)
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.rank, self.world_size, self.block_row_groups = rank, world_size, block_row_groups
        self.drop_last, self.columns = drop_last, tuple(columns)
        self.rows = _check_rows(rows, self.split.n_rows)
        self.epoch = 0
        self.max_rows_buffered = 0

    def set_epoch(self, epoch: int) -> None:
        """Like DistributedSampler.set_epoch: call before each epoch so the order changes."""
        self.epoch = int(epoch)

    def plan(self) -> list[Block]:
        return epoch_plan(self.split.row_groups, self.rows, self.seed, self.epoch, self.rank,
                          self.world_size, self.block_row_groups, self.shuffle)

    @property
    def n_genes(self) -> int:
        return self.store.n_genes

    @property
    def n_rows(self) -> int:
        """Rows this rank sees this epoch (with shuffle and several ranks it may vary between epochs)."""
        return sum(b.n_rows for b in self.plan())

    def __len__(self) -> int:
        n = self.n_rows
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        b = self.batch_size
        pending: dict[str, np.ndarray] | None = None
        for block, (arrays, index, held) in self._fetched(self.plan()):
            if index is ORDERED:  # the backend already permuted the block: batches are slices
                def rows(a, z, arrays=arrays):
                    return {k: _slice_rows(v, a, z) for k, v in arrays.items()}
            else:
                order = block.order() if index is None else index[block.order()]

                def rows(a, z, arrays=arrays, order=order):
                    return {k: _take_rows(v, order[a:z]) for k, v in arrays.items()}
            n, pos = block.n_rows, 0
            self._note(held + (0 if pending is None else len(pending["y"])))
            if pending is not None:  # leftovers of the previous block come first
                take = min(b - len(pending["y"]), n)
                head = rows(0, take)
                pending = {k: _cat_rows(v, head[k]) for k, v in pending.items()}
                pos = take
                if len(pending["y"]) < b:
                    continue
                yield self._batch(pending)
                pending = None
            while n - pos >= b:
                yield self._batch(rows(pos, pos + b))
                pos += b
            if pos < n:
                pending = rows(pos, n)
        if pending is not None and not self.drop_last:
            yield self._batch(pending)

    def _fetched(self, blocks: list[Block]):
        """(block, _fetch(block)) in order; backends may override to read ahead."""
        for block in blocks:
            yield block, self._fetch(block)

    def _fetch(self, block: Block) -> tuple[dict[str, np.ndarray], np.ndarray | None, int]:
        """(arrays, index, rows held): the block's rows in block order are arrays[k][index] (index None:
        arrays are exactly those rows)."""
        raise NotImplementedError

    def _note(self, rows: int) -> None:
        self.max_rows_buffered = max(self.max_rows_buffered, int(rows))

    def _batch(self, a: dict[str, np.ndarray]) -> Batch:
        x = a["x"]
        if isinstance(x, CSRRows):
            x = x.to_torch() if self.x_format == "csr" else torch.from_numpy(x.to_dense())
        else:
            x = torch.from_numpy(x)
            if self.x_format == "csr":
                x = x.to_sparse_csr()
        return Batch(x, torch.from_numpy(a["y"]), {c: torch.from_numpy(a[c]) for c in self.columns})


class StreamLoader(Loader):
    """Reads each block's row groups from parquet when needed; holds one block (+ < batch_size leftovers).

    The block buffer is reused across blocks: batches are gathered copies, never views of it.
    """

    def __init__(self, store, split, **kw):
        super().__init__(store, split, **kw)
        self._reader = _GroupReader(store, split, self.columns)
        self._buf: dict[str, np.ndarray] | None = None

    def _fetch(self, block):
        if self._buf is None or len(self._buf["y"]) < block.n_rows:
            self._buf = None  # free the old one first
            self._buf = self._reader.empty(block.n_rows)
        at = 0
        for g, sel in zip(block.groups, block.select):
            at += self._reader.read_into(g, sel, self._buf, at)
        view = {k: v[:block.n_rows] for k, v in self._buf.items()}
        return view, None, len(self._buf["y"])


class _SparseGroupReader:
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
            out = {k: _take_rows(v, sel) for k, v in out.items()}
        return out


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


class SparseStreamLoader(Loader):
    """Like "stream", from the sparse layout. Background threads read and permute the next `read_ahead`
    blocks (one row-by-row copy out of the memory-mapped files, `CSRRows.gather`) while the current one is
    cut into batches (slices, no copy); holds at most 1 + read_ahead blocks."""

    def __init__(self, store, split, **kw):
        super().__init__(store, split, **kw)
        self._reader = _SparseGroupReader(store, split, self.columns)

    def _fetch(self, block):
        """The block's rows already in the epoch's order (one gather, in the read-ahead thread)."""
        parts = [self._reader.read(g, sel) for g, sel in zip(block.groups, block.select)]
        order = block.order()
        arrays = {"x": CSRRows.gather([p["x"] for p in parts], order)}
        for k in parts[0]:
            if k != "x":
                arrays[k] = np.concatenate([p[k] for p in parts])[order]
        return arrays, ORDERED, (1 + self.read_ahead) * block.n_rows

    #: blocks read ahead, each by its own thread (numpy's copies and pyarrow release the GIL: two cores)
    read_ahead = 2

    def _fetched(self, blocks):
        if not blocks:
            return
        with ThreadPoolExecutor(self.read_ahead, initializer=background_priority) as pool:
            pending = [pool.submit(self._fetch, b) for b in blocks[:self.read_ahead]]
            for i, block in enumerate(blocks):
                cur = pending.pop(0).result()
                if i + self.read_ahead < len(blocks):
                    pending.append(pool.submit(self._fetch, blocks[i + self.read_ahead]))
                yield block, cur


class MemoryLoader(Loader):
    """Reads the rows it can ever need into one dense array on first use, then serves every epoch from it.

    Without shuffle (or with one rank) that is this rank's share; with shuffle and several ranks the
    row groups a rank gets change every epoch, so it holds all selected rows of the split.
    """

    def __init__(self, store, split, **kw):
        super().__init__(store, split, **kw)
        self._reader = _GroupReader(store, split, self.columns)
        self._mem: dict[str, np.ndarray] | None = None
        self._start: dict[int, int] = {}

    def _load(self) -> None:
        if self.shuffle and self.world_size > 1:
            sizes = [r for _, _, r in self.split.row_groups]
            sel = group_selections(sizes, self.rows)
            todo = [(g, s) for g, s in enumerate(sel) if (sizes[g] if s is None else len(s)) > 0]
        else:
            todo = [(g, s) for blk in self.plan() for g, s in zip(blk.groups, blk.select)]
        n = sum(self.split.row_groups[g][2] if s is None else len(s) for g, s in todo)
        mem, at = self._reader.empty(n), 0
        for g, s in todo:
            self._start[g] = at
            at += self._reader.read_into(g, s, mem, at)
        self._mem = mem

    def _fetch(self, block):
        if self._mem is None:
            self._load()
        index = np.concatenate([self._start[g] + np.arange(self.split.row_groups[g][2] if s is None else len(s))
                                for g, s in zip(block.groups, block.select)])
        return self._mem, index, len(self._mem["y"])


class MerlinLoader(Loader):
    """merlin-dataloader's torch Loader over the split's parquet files, its outputs converted to Batch.

    Without shuffle it reads the files in order, which gives the same batches as "stream"; with shuffle
    it uses merlin's own order (same rows per epoch, different batches; merlin shuffles with numpy's global
    RNG, which it reseeds from `seed_fn`). It shards by contiguous partitions, not by our plan. `rows`
    subsets are not supported. CPU merlin is slow (about 120 cells/s at 19,331 genes, per the reference
    notes): it is here to compare against, not to train with.
    """

    def __init__(self, store, split, **kw):
        super().__init__(store, split, **kw)
        if self.rows is not None:
            raise LoaderError("the merlin backend does not support `rows` subsets; use 'stream' or 'memory'")
        try:
            import merlin.io  # noqa: F401
            from merlin.dataloader.torch import Loader as _MerlinTorchLoader  # noqa: F401
        except ImportError as e:
            raise MerlinNotInstalled(
                f"the merlin backend needs merlin-dataloader ({e}); it cannot live in the main environment: "
                "run `make merlin-env` (creates .venv-merlin with `sctab[merlin]` pins) and use that venv"
            ) from e
        self.n_classes = store.n_classes

    def _merlin_loader(self):
        import merlin.io
        from merlin.dataloader.torch import Loader as MerlinTorchLoader

        cols = ["X", "cell_type", *[c for c in self.columns if c != "cell_type"]]
        ds = merlin.io.Dataset([str(f) for f in self.split.files], engine="parquet")
        ds.schema = ds.schema.select_by_name(cols)  # the loader reads the schema's columns only
        epoch, seed = self.epoch, self.seed
        return MerlinTorchLoader(ds, batch_size=self.batch_size, shuffle=self.shuffle,
                                 seed_fn=lambda: seed * 100_003 + epoch, global_size=self.world_size,
                                 global_rank=self.rank, drop_last=self.drop_last)

    def __iter__(self) -> Iterator[Batch]:
        g = self.n_genes
        # `with`: merlin's loading thread is stopped and joined however the iteration ends; left running after
        # an epoch abandoned early (a bench reads 4 batches), the process died at exit ("terminate called
        # without an active exception")
        with self._merlin_loader() as merlin_loader:
            for feats, _ in merlin_loader:
                y = feats["cell_type"].reshape(-1).to(torch.int64).contiguous()
                if "X" in feats:  # a fixed-shape list column comes as one 2-d tensor
                    x = feats["X"]
                else:  # a ragged one as values + offsets
                    x, offsets = feats["X__values"], feats["X__offsets"]
                    if len(offsets) != len(y) + 1 or bool((offsets.diff() != g).any()):
                        raise LoaderError(f"split {self.split_name!r}: a row of X does not have {g} values")
                x = x.reshape(-1, g).to(torch.float32).contiguous()
                if ((y < 0) | (y >= self.n_classes)).any():
                    raise LoaderError(f"split {self.split_name!r}: cell_type code outside [0, {self.n_classes})")
                self._note(len(y))
                if self.x_format == "csr":
                    x = x.to_sparse_csr()
                yield Batch(x, y, {c: feats[c].reshape(-1).to(torch.int64).contiguous() for c in self.columns})

    def __len__(self) -> int:
        if self.world_size == 1:
            return super().__len__()
        return len(self._merlin_loader())


def _check_rows(rows, n_rows: int) -> np.ndarray | None:
    if rows is None:
        return None
    rows = np.asarray(rows)
    if rows.ndim != 1 or (rows.size and not np.issubdtype(rows.dtype, np.integer)):
        raise LoaderError(f"`rows` must be a 1-d array of integer row positions, got {rows.dtype} {rows.shape}")
    rows = np.sort(rows.astype(np.int64))
    if rows.size and (rows[0] < 0 or rows[-1] >= n_rows):
        bad = rows[0] if rows[0] < 0 else rows[-1]
        raise LoaderError(f"`rows` has position {int(bad)} outside the split's [0, {n_rows})")
    if rows.size > 1 and (np.diff(rows) == 0).any():
        raise LoaderError("`rows` has duplicate positions: every row would not be seen exactly once")
    return rows


_BACKEND_CLASSES = {"stream": StreamLoader, "sparse": SparseStreamLoader, "memory": MemoryLoader,
                    "merlin": MerlinLoader}


def make_loader(store: Store | str | Path, split: str, *, batch_size: int, backend: str = "stream",
                shuffle: bool = False, seed: int = 0, rank: int = 0, world_size: int = 1,
                block_row_groups: int = 8, rows: np.ndarray | None = None, drop_last: bool = False,
                columns: tuple[str, ...] = (), x_format: str = "dense") -> Loader:
    """A loader over `split` of `store` for one rank of `world_size`; see the module docstring."""
    if x_format not in X_FORMATS:
        raise LoaderError(f"unknown x_format {x_format!r}; known: {', '.join(X_FORMATS)}")
    if backend not in _BACKEND_CLASSES:
        raise LoaderError(f"unknown loader backend {backend!r}; known: {', '.join(BACKENDS)}")
    if int(batch_size) < 1:
        raise LoaderError(f"batch_size must be >= 1, got {batch_size}")
    if int(world_size) < 1 or not 0 <= int(rank) < int(world_size):
        raise LoaderError(f"rank {rank} is outside [0, world_size={world_size})")
    if int(block_row_groups) < 1:
        raise LoaderError(f"block_row_groups must be >= 1, got {block_row_groups}")
    if not isinstance(store, Store):
        store = Store(store)
    return _BACKEND_CLASSES[backend](
        store, split, batch_size=int(batch_size), shuffle=bool(shuffle), seed=int(seed), rank=int(rank),
        world_size=int(world_size), block_row_groups=int(block_row_groups), rows=rows, drop_last=bool(drop_last),
        columns=tuple(columns), x_format=x_format)
