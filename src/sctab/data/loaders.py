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

The parts every backend shares are their own modules: the plan (:mod:`sctab.data.epoch_plan`), the batching
base class with `Batch` and `LoaderError` (:mod:`sctab.data.batching`), the row-group readers
(:mod:`sctab.data.group_readers`) and the CSR rows of the sparse path (:mod:`sctab.data.csr_rows`); the merlin
backend is :mod:`sctab.data.merlin_loader`. This module holds the other three backends and `make_loader`.

These modules import only numpy, scipy, pyarrow, torch and sctab.data's store helpers (no mlflow, ray, census
stack), so they also work in the slim merlin venv.
"""

from __future__ import annotations

import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from sctab.data.batching import ORDERED, Batch, Loader, LoaderError
from sctab.data.csr_rows import CSRRows
from sctab.data.epoch_plan import group_selections
from sctab.data.group_readers import GroupReader, SparseGroupReader
from sctab.data.merlin_loader import MerlinLoader
from sctab.data.store import Store

__all__ = ["BACKENDS", "X_FORMATS", "Batch", "LoaderError", "MemoryLoader", "SparseStreamLoader", "StreamLoader",
           "background_priority", "make_loader"]

BACKENDS = ("stream", "memory", "merlin", "sparse")
X_FORMATS = ("dense", "csr")

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


class StreamLoader(Loader):
    """Reads each block's row groups from parquet when needed; holds one block (+ < batch_size leftovers).

    The block buffer is reused across blocks: batches are gathered copies, never views of it.
    """

    def __init__(self, store, split, **kw):
        super().__init__(store, split, **kw)
        self._reader = GroupReader(store, split, self.columns)
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


class SparseStreamLoader(Loader):
    """Like "stream", from the sparse layout. Background threads read and permute the next `read_ahead`
    blocks (one row-by-row copy out of the memory-mapped files, `CSRRows.gather`) while the current one is
    cut into batches (slices, no copy); holds at most 1 + read_ahead blocks."""

    def __init__(self, store, split, **kw):
        super().__init__(store, split, **kw)
        self._reader = SparseGroupReader(store, split, self.columns)

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
        self._reader = GroupReader(store, split, self.columns)
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
