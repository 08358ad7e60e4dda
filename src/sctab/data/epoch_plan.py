"""The plan of an epoch: which row groups each rank reads, in which blocks, in which order.

It is a pure function of (seed, epoch, rank, world_size), shared by every loader backend so that they agree
batch for batch and runs are reproducible; the shuffle is the reference's block shuffle (row groups permuted,
then rows inside a block of ``block_row_groups`` row groups).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np


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
