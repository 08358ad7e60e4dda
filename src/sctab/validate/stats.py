"""Per-row statistics of the store, computed streaming.

A split of the store can be far bigger than memory (15 million cells x 19,331 genes at paper
scale), so ``X`` is never loaded whole: parquet parts are read a few thousand rows at a time
(``ParquetFile.iter_batches``), each batch is reduced to a handful of numbers per row, and only
those numbers are kept (about 40 bytes a cell). Great Expectations then checks the small frame.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

STAT_COLUMNS = ("part", "row", "n_values", "n_nonfinite", "min", "max", "expm1_sum", "cell_type")
VALUES_PER_BATCH = 1 << 22  # ~16 MB of float32 per batch, ~32 MB once widened for expm1


@dataclass
class StoreStats:
    """Row statistics of one split plus the layout problems found while reading it."""

    split: str
    frame: pd.DataFrame
    problems: list[str] = field(default_factory=list)


def part_files(split_dir: Path) -> list[Path]:
    """``part.N.parquet`` files in numeric order (part.10 after part.9)."""

    def key(p: Path):
        m = re.fullmatch(r"part\.(\d+)\.parquet", p.name)
        return (0, int(m.group(1))) if m else (1, p.name)

    return sorted(Path(split_dir).glob("part.*.parquet"), key=key)


def _empty_frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "part": pd.Series([], dtype=object),
            "row": pd.Series([], dtype=np.int64),
            "n_values": pd.Series([], dtype=np.int32),
            "n_nonfinite": pd.Series([], dtype=np.int32),
            "min": pd.Series([], dtype=np.float32),
            "max": pd.Series([], dtype=np.float32),
            "expm1_sum": pd.Series([], dtype=np.float64),
            "cell_type": pd.Series([], dtype=np.int64),
        }
    )


def _row_stats(mat: np.ndarray) -> tuple[np.ndarray, ...]:
    """(n_nonfinite, min, max, expm1 sum) per row of a dense (rows, genes) block.

    min/max ignore non-finite entries and the sum of such a row is NaN: non-finite values are
    counted on their own, so one NaN does not also show up as a wrong minimum or row sum.
    """
    finite = np.isfinite(mat)
    n_bad = mat.shape[1] - finite.sum(axis=1)
    if mat.shape[1] == 0:
        nan = np.full(mat.shape[0], np.nan)
        return n_bad, nan, nan, np.zeros(mat.shape[0])
    if not n_bad.any():
        return n_bad, mat.min(axis=1), mat.max(axis=1), np.expm1(mat, dtype=np.float64).sum(axis=1)
    clean = np.where(finite, mat, np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows: NaN min/max is intended
        mn, mx = np.nanmin(clean, axis=1), np.nanmax(clean, axis=1)
    # a row with a lost value cannot sum right: leave its sum missing (GX skips missing values)
    sums = np.where(n_bad > 0, np.nan, np.nansum(np.expm1(clean, dtype=np.float64), axis=1))
    return n_bad, mn, mx, sums


def _batch_stats(x: pa.Array) -> tuple[np.ndarray, ...]:
    """Row statistics of one batch of the ``X`` list column (null rows count as 0 values)."""
    if isinstance(x, pa.ChunkedArray):
        x = x.combine_chunks()
    lengths = pc.fill_null(pc.list_value_length(x), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    # flatten() (not .values) honours slicing offsets and null rows
    flat = x.flatten().to_numpy(zero_copy_only=False)
    n = len(lengths)
    if n and (lengths == lengths[0]).all():
        n_bad, mn, mx, sums = _row_stats(flat.reshape(n, int(lengths[0])))
    else:  # ragged rows: a broken store; slow path, row by row
        n_bad, mn, mx, sums = (np.zeros(n, np.int64), np.full(n, np.nan), np.full(n, np.nan), np.zeros(n))
        ends = np.cumsum(lengths)
        for i in range(n):
            r = _row_stats(flat[ends[i] - lengths[i] : ends[i]].reshape(1, -1))
            n_bad[i], mn[i], mx[i], sums[i] = (v[0] for v in r)
    return lengths, n_bad, mn, mx, sums


def split_row_stats(split_dir: str | Path, n_genes_hint: int | None = None) -> StoreStats:
    """Stream every part of one split and return one stats row per cell.

    ``n_genes_hint`` sizes the batches (rows per batch = VALUES_PER_BATCH / n_genes).
    """
    split_dir = Path(split_dir)
    problems: list[str] = []
    if not split_dir.is_dir():
        return StoreStats(split_dir.name, _empty_frame(), [f"directory {split_dir} does not exist"])
    batch_rows = max(1, VALUES_PER_BATCH // max(1, n_genes_hint or 20_000))
    cols: dict[str, list] = {c: [] for c in STAT_COLUMNS}
    for path in part_files(split_dir):
        try:
            pf = pq.ParquetFile(path, page_checksum_verification=True)  # the store writes page CRCs
        except Exception as exc:  # noqa: BLE001 - report any unreadable file by name
            problems.append(f"{path.name} is not a readable parquet file ({exc})")
            continue
        names = set(pf.schema_arrow.names)
        if "X" not in names:
            problems.append(f"{path.name} has no X column (columns: {', '.join(sorted(names))})")
            continue
        if "cell_type" not in names:
            problems.append(f"{path.name} has no cell_type column")
        read = ["X"] + (["cell_type"] if "cell_type" in names else [])
        offset = 0
        for batch in pf.iter_batches(batch_size=batch_rows, columns=read):
            n = batch.num_rows
            lengths, n_bad, mn, mx, sums = _batch_stats(batch.column("X"))
            if "cell_type" in names:
                # a null code is as wrong as an out-of-range one: -1 fails the lookup check
                ct = pc.fill_null(batch.column("cell_type"), -1).to_numpy(zero_copy_only=False)
            else:
                ct = np.full(n, -1, dtype=np.int64)
            cols["part"].append(np.full(n, path.name, dtype=object))
            cols["row"].append(np.arange(offset, offset + n, dtype=np.int64))
            cols["n_values"].append(lengths.astype(np.int32))
            cols["n_nonfinite"].append(n_bad.astype(np.int32))
            cols["min"].append(mn.astype(np.float32))
            cols["max"].append(mx.astype(np.float32))
            cols["expm1_sum"].append(sums.astype(np.float64))
            cols["cell_type"].append(ct)
            offset += n
    if not cols["row"]:
        return StoreStats(split_dir.name, _empty_frame(), problems)
    frame = pd.DataFrame({c: np.concatenate(v) for c, v in cols.items()})
    return StoreStats(split_dir.name, frame, problems)


def parquet_rows(path: str | Path) -> int:
    """Number of rows of a parquet file, from its footer (nothing else is read)."""
    return pq.ParquetFile(path).metadata.num_rows
