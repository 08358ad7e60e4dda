"""The writer of the training store (the layout is :mod:`sctab.data.store`'s, with its reader).

It streams X from a counts reader (the census's, in the pipeline) one chunk of cells at a time and writes the
whole store into a temporary folder that is renamed into place only when complete; ``write_sparse_layout``
adds the sparse layout beside the dense parts of a store written without it (or downloaded).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from sctab.data.checksum import digest_metadata
from sctab.data.normalize import normalize_log1p
from sctab.data.split import SPLITS
from sctab.data.spool import CountSpool
from sctab.data.store import (
    CODE_COLUMNS,
    SPARSE_DIR,
    Store,
    StoreError,
    balanced_class_weights,
    list_column_to_dense,
    open_parquet,
    sparse_part_name,
)
from sctab.io import atomic_dir, write_json
from sctab.params_schema import section

if TYPE_CHECKING:
    import scipy.sparse as sp


def write_frame(df: pd.DataFrame, path: Path) -> None:
    """A small table of the store (lookups, var) as parquet with page checksums."""
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), path, write_page_checksum=True)


def _lookups(obs: pd.DataFrame, ontology) -> dict[str, pd.DataFrame]:
    """Codes are positions in the sorted label list, identical for every split."""
    out = {}
    for c in CODE_COLUMNS:
        labels = sorted(obs[c].astype(str).unique())
        out[c] = pd.DataFrame({"label": labels})
    term_of = obs.groupby(obs["cell_type"].astype(str), observed=True)["cell_type_ontology_term_id"].first()
    out["cell_type"]["ontology_term_id"] = [str(term_of[lab]) for lab in out["cell_type"]["label"]]
    return out


def x_list_array(x: np.ndarray) -> pa.Array:
    """A (cells, genes) matrix as the store's X column: one list<float32> of n_genes values per cell."""
    n, g = x.shape
    offsets = pa.array(np.arange(0, (n + 1) * g, g, dtype=np.int32) if (n + 1) * g < 2**31
                       else np.arange(0, (n + 1) * g, g, dtype=np.int64))
    values = pa.array(x.reshape(-1), type=pa.float32())
    arr = (pa.ListArray if offsets.type == pa.int32() else pa.LargeListArray).from_arrays(offsets, values)
    return arr.cast(pa.list_(pa.float32())) if offsets.type != pa.int32() else arr


def write_store(params: dict, obs: pd.DataFrame, var: pd.DataFrame, assignment: pd.DataFrame,
                subsets: dict[str, np.ndarray], ontology, out_dir: str | Path,
                read_counts: Callable[[np.ndarray, np.ndarray], sp.spmatrix]) -> dict:
    """Fetch raw counts for the kept cells, normalise, and write the store atomically. Returns the report.

    ``read_counts(joinids, var_ids)`` returns the raw counts of those cells and genes, in that order: in the
    pipeline the census reader of ``sctab.census.source.open_counts``. The writer opens no census itself, so
    it writes counts from any source and sctab.data does not depend on census code.
    """
    st = section(params, "store")
    target_sum, rg, truncate, layout = st.target_sum, st.row_group_size, st.truncate_to_row_group, st.layout
    chunk = max(rg, st.chunk_size // rg * rg)
    seed = section(params, "seed")

    n_obs = len(obs)
    obs = obs.merge(assignment[["soma_joinid", "split"]], on="soma_joinid", how="inner", validate="one_to_one")
    if len(obs) != n_obs or len(obs) != len(assignment):
        raise StoreError(f"split assignment ({len(assignment)} cells) does not match extracted obs ({n_obs} cells, "
                         f"{len(obs)} in common): re-run the split stage")
    lookups = _lookups(obs, ontology)
    codes = {c: pd.Categorical(obs[c].astype(str), categories=lookups[c]["label"]).codes.astype(np.int64)
             for c in CODE_COLUMNS}
    var_ids = var["soma_joinid"].to_numpy(np.int64)
    report = {"rows": {}, "dropped_zero_count": {}, "truncated": {}, "n_genes": int(len(var)),
              "n_classes": int(len(lookups["cell_type"])), "row_group_size": rg, "target_sum": target_sum}

    with atomic_dir(out_dir) as tmp:
        all_joinids = obs["soma_joinid"].to_numpy(np.int64)
        is_primary = obs["is_primary_data"].to_numpy(bool)
        for split_i, split in enumerate(SPLITS):
            rows = np.flatnonzero(obs["split"].to_numpy() == split)
            rows = np.random.default_rng([seed, 11, split_i]).permutation(rows)  # shuffled on disk
            (tmp / split).mkdir()
            parts = PartWriter(tmp / split, rows_per_part=chunk, row_group_size=rg)
            # the counts are read in ascending soma_joinid order (each tile of the census's X about once), then
            # handed back chunk by chunk in the store's shuffled order by a spool on disk (sctab.data.spool)
            by_id = np.argsort(all_joinids[rows], kind="stable")
            with CountSpool(tmp / f".spool-{split}", len(rows), chunk, len(var_ids)) as spool:
                with tqdm(total=len(rows), desc=f"read {split}", unit="cells", disable=None) as bar:
                    for start in range(0, len(rows), chunk):
                        pos = by_id[start:start + chunk]
                        spool.add(pos, read_counts(all_joinids[rows[pos]], var_ids))
                        bar.update(len(pos))
                dropped = 0
                with tqdm(total=len(rows), desc=f"store {split}", unit="cells", disable=None) as bar:
                    for start in range(0, len(rows), chunk):
                        sel = rows[start:start + chunk]
                        joinids = all_joinids[sel]
                        counts = spool.bucket(start // chunk)
                        ok = np.asarray(counts.sum(axis=1)).ravel() > 0
                        dropped += int((~ok).sum())
                        sel, joinids, counts = sel[ok], joinids[ok], counts[ok]
                        cols = {"X": x_list_array(normalize_log1p(counts, target_sum))}
                        for c in CODE_COLUMNS:
                            cols[c] = pa.array(codes[c][sel], type=pa.int64())
                        cols["soma_joinid"] = pa.array(joinids, type=pa.int64())
                        cols["is_primary_data"] = pa.array(is_primary[sel])
                        parts.add(pa.table(cols))
                        bar.update(len(rows[start:start + chunk]))
            report["truncated"][split] = parts.close(truncate)
            n_written = parts.n_written
            if n_written == 0:
                raise StoreError(f"split {split!r} has no cells to write (after dropping {dropped} zero-count cells)")
            report["rows"][split] = n_written
            report["dropped_zero_count"][split] = dropped
            report["truncated"].setdefault(split, 0)
            if split == "train":
                train_ids = parts.written_joinids()  # a store row's position is its index here

        lk = tmp / "categorical_lookup"
        lk.mkdir()
        for c, df in lookups.items():
            write_frame(df, lk / f"{c}.parquet")
        write_frame(var[["feature_id", "feature_name"]], tmp / "var.parquet")
        train_labels = codes["cell_type"][obs["split"].to_numpy() == "train"]
        np.save(tmp / "class_weights.npy", balanced_class_weights(train_labels, len(lookups["cell_type"])))
        (tmp / "cell_type_hierarchy").mkdir()
        np.save(tmp / "cell_type_hierarchy" / "child_matrix.npy",
                ontology.child_matrix(lookups["cell_type"]["ontology_term_id"].tolist()))
        (tmp / "train_subsets").mkdir()
        train_rows = pd.Index(train_ids)
        for name, joinids in subsets.items():
            pos = train_rows.get_indexer(np.asarray(joinids, dtype=np.int64))  # -1: not written (dropped)
            pos = np.sort(pos[pos >= 0].astype(np.int64))
            np.save(tmp / "train_subsets" / f"{name}.npy", pos)
        report["subsets"] = {k: int(len(v)) for k, v in subsets.items()}
        report["layout"] = layout
        if layout == "both":
            report["sparse"] = _write_sparse_parts(tmp, tmp / SPARSE_DIR, report["n_genes"])
        write_json(tmp / "store_report.json", report)
    return report


class PartWriter:
    """Buffers normalised rows and writes `part.N.parquet` files of `rows_per_part` rows in row groups.

    Public for writers of other stores in this layout (the bench's synthetic one)."""

    def __init__(self, folder: Path, rows_per_part: int, row_group_size: int):
        self.folder, self.rows_per_part, self.rg = folder, rows_per_part, row_group_size
        self.pending: list[pa.Table] = []
        self.n_pending = 0
        self.n_written = 0
        self.part = 0
        self._joinids: list[np.ndarray] = []  # soma_joinid of every written row, in order (8 bytes a row)

    def add(self, tbl: pa.Table) -> None:
        self.pending.append(tbl)
        self.n_pending += tbl.num_rows
        while self.n_pending >= self.rows_per_part:
            buf = pa.concat_tables(self.pending)
            self._write(buf.slice(0, self.rows_per_part))
            rest = buf.slice(self.rows_per_part)
            self.pending, self.n_pending = ([rest] if rest.num_rows else []), rest.num_rows

    def close(self, truncate: bool) -> int:
        """Write the remainder; with `truncate`, drop rows past the last full row group. Returns rows dropped."""
        if not self.n_pending:
            return 0
        buf = pa.concat_tables(self.pending)
        keep = (self.n_written + buf.num_rows) // self.rg * self.rg - self.n_written if truncate else buf.num_rows
        if keep > 0:
            self._write(buf.slice(0, keep))
        self.pending, self.n_pending = [], 0
        return int(buf.num_rows - max(keep, 0))

    def _write(self, tbl: pa.Table) -> None:
        idx = pa.array(np.arange(self.n_written, self.n_written + tbl.num_rows, dtype=np.int64))
        tbl = tbl.append_column("idx", idx)
        pq.write_table(tbl, self.folder / f"part.{self.part}.parquet", row_group_size=self.rg, compression="snappy",
                       write_page_checksum=True)
        self._joinids.append(tbl.column("soma_joinid").to_numpy().astype(np.int64))
        self.part += 1
        self.n_written += tbl.num_rows

    def written_joinids(self) -> np.ndarray:
        """soma_joinid of each written row: row i of the split is ``written_joinids()[i]``."""
        return np.concatenate(self._joinids) if self._joinids else np.zeros(0, np.int64)


# ----------------------------------------------------------------------------------------------- sparse layout
def dense_to_csr_lists(x: np.ndarray) -> tuple[pa.Array, pa.Array]:
    """(rows, genes) float32 -> (`indices` list<int32>, `values` list<float32>) of the non-zero entries."""
    rows, cols = np.nonzero(x)
    offsets = np.zeros(len(x) + 1, np.int64)
    np.cumsum(np.bincount(rows, minlength=len(x)), out=offsets[1:])
    if offsets[-1] >= 2**31:
        raise StoreError(f"a row group with {int(offsets[-1])} non-zero values does not fit int32 offsets")
    off = pa.array(offsets.astype(np.int32))
    return (pa.ListArray.from_arrays(off, pa.array(cols.astype(np.int32))),
            pa.ListArray.from_arrays(off, pa.array(x[rows, cols].astype(np.float32, copy=False))))


def _write_sparse_parts(root: Path, out: Path, n_genes: int) -> dict:
    """Mirror every dense part of `root` under `out` (same files, row groups, row order), X as CSR lists.

    Reads one row group at a time, so memory is bounded by the row group size, not the store."""
    nnz, cells = 0, 0
    for split in SPLITS:
        d = root / split
        if not d.is_dir():
            continue
        (out / split).mkdir(parents=True)
        for f in sorted(d.glob("part.*.parquet")):
            pf = open_parquet(f)
            others = [c for c in pf.schema_arrow.names if c != "X"]
            writer = None
            try:
                for i in range(pf.metadata.num_row_groups):
                    tbl = pf.read_row_group(i)
                    x = list_column_to_dense(tbl.column("X"), n_genes, f)
                    ind, val = dense_to_csr_lists(x)
                    nnz += len(val.values)
                    cells += len(x)
                    batch = pa.record_batch([ind, val, *[tbl.column(c).combine_chunks() for c in others]],
                                            names=["indices", "values", *others])
                    if writer is None:
                        writer = pa.ipc.new_file(out / split / sparse_part_name(f), batch.schema)
                    writer.write_batch(batch, custom_metadata=digest_metadata(batch))
            finally:
                if writer is not None:
                    writer.close()
    return {"cells": cells, "nnz": nnz, "density": nnz / max(cells * n_genes, 1)}


def write_sparse_layout(root: str | Path) -> dict:
    """Add (or rebuild) the sparse layout of an existing dense store, atomically. Returns nnz statistics.

    For stores written with `store.layout: dense` (the default) or downloaded in the published layout."""
    root = Path(root)
    n_genes = Store(root).n_genes
    with atomic_dir(root / SPARSE_DIR) as tmp:
        return _write_sparse_parts(root, tmp, n_genes)
