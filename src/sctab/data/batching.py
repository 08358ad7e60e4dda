"""What every loader backend shares: ``Batch``, ``LoaderError`` and the ``Loader`` base class (its arguments,
the epoch's plan, and the cutting of blocks into batches, leftovers carried over). A backend only says where a
block's rows are (``_fetch``); :mod:`sctab.data.loaders` holds the backends and ``make_loader``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import torch

from sctab.data.csr_rows import CSRRows, cat_rows, slice_rows, take_rows
from sctab.data.epoch_plan import Block, epoch_plan
from sctab.data.store import Store


class LoaderError(ValueError):
    """Bad loader arguments or data that must not be trained on silently."""


@dataclass
class Batch:
    x: torch.Tensor  # (b, n_genes) float32, contiguous; or torch.sparse_csr with x_format="csr"
    y: torch.Tensor  # (b,) int64 cell_type codes
    obs: dict[str, torch.Tensor] = field(default_factory=dict)  # extra `columns`, int64

    def __len__(self) -> int:
        return int(self.y.shape[0])


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
                    return {k: slice_rows(v, a, z) for k, v in arrays.items()}
            else:
                order = block.order() if index is None else index[block.order()]

                def rows(a, z, arrays=arrays, order=order):
                    return {k: take_rows(v, order[a:z]) for k, v in arrays.items()}
            n, pos = block.n_rows, 0
            self._note(held + (0 if pending is None else len(pending["y"])))
            if pending is not None:  # leftovers of the previous block come first
                take = min(b - len(pending["y"]), n)
                head = rows(0, take)
                pending = {k: cat_rows(v, head[k]) for k, v in pending.items()}
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
