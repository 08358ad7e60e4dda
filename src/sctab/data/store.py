"""The training store, in the published scTab (Merlin-compatible) parquet layout, and its reader.

Layout (docs/published-artifacts.md):
    train/ val/ test/            part.N.parquet: X list<float32> (fixed length n_genes, normalised),
                                 cell_type and other obs columns as int64 codes, is_primary_data bool
    categorical_lookup/<col>.parquet   column `label` (row position = code); cell_type also has
                                       `ontology_term_id` here (an extra column, ignored by old readers)
    var.parquet                  feature_id, feature_name in model-input order
    class_weights.npy            sklearn 'balanced' weights over the classes (train split)
    cell_type_hierarchy/child_matrix.npy   [i, j] = 1 when class j is class i or a subtype of it
    train_subsets/<kind>_<pct>.npy         row positions in train of the nested subsets (ours)
    store_report.json            rows per split, dropped cells, timings (ours)
    sparse/train/ val/ test/     optional (`store.layout: both`, or `write_sparse_layout`): part.N.arrow, the
                                 same rows, files and row groups (one Arrow IPC record batch per dense row
                                 group) as the dense parts, X as CSR-like `indices` list<int32> (sorted gene
                                 positions of the non-zero values) + `values` list<float32>; every other column
                                 copied. Uncompressed Arrow IPC so that a reader memory-maps it and reads a row
                                 group without decoding (parquet's list levels + snappy cost ~30-70 ms per
                                 1,024 cells here, more than the whole batch budget of a 50k cells/s loader).

The writer streams X from a counts reader (the census's, in the pipeline) one chunk of cells at a time and
writes the whole store into a temporary folder that is renamed into place only when complete.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
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
from sctab.io import atomic_dir, write_json
from sctab.params_schema import section

if TYPE_CHECKING:
    import scipy.sparse as sp

SPARSE_DIR = "sparse"
CODE_COLUMNS = ["cell_type", "dataset_id", "donor_id", "assay", "development_stage", "disease", "tissue",
                "tissue_general", "tech_sample"]


class StoreError(ValueError):
    """The store on disk is missing pieces or does not match what the reader expects."""


# ----------------------------------------------------------------------------------------------- writer
# ----------------------------------------------------------------------------------------------- checksums
# Every parquet file of the store carries a CRC32 per data page (the format's optional page checksum), and
# every read verifies it: a flipped bit in a page is an error naming the file, not other numbers. Files
# written before checksums existed have none and read as before.
def write_frame(df: pd.DataFrame, path: Path) -> None:
    """A small table of the store (lookups, var) as parquet with page checksums."""
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), path, write_page_checksum=True)


def open_parquet(path: str | Path) -> pq.ParquetFile:
    """A store part opened so that every page read is checked against its checksum."""
    return pq.ParquetFile(path, page_checksum_verification=True)


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


def sparse_part_name(dense_part: Path) -> str:
    """part.N.parquet -> part.N.arrow"""
    return Path(dense_part).stem + ".arrow"


def write_sparse_layout(root: str | Path) -> dict:
    """Add (or rebuild) the sparse layout of an existing dense store, atomically. Returns nnz statistics.

    For stores written with `store.layout: dense` (the default) or downloaded in the published layout."""
    root = Path(root)
    n_genes = Store(root).n_genes
    with atomic_dir(root / SPARSE_DIR) as tmp:
        return _write_sparse_parts(root, tmp, n_genes)


def balanced_class_weights(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """n_samples / (n_classes * count) per class (sklearn's 'balanced'); classes absent from train get 0."""
    counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
    w = np.zeros(n_classes, dtype=np.float64)
    present = counts > 0
    w[present] = labels.size / (present.sum() * counts[present])
    return w.astype(np.float32)


# ----------------------------------------------------------------------------------------------- reader
@dataclass
class StoreSplit:
    name: str
    files: list[Path]
    n_rows: int
    row_groups: list[tuple[Path, int, int]]  # (file, row group index, rows)


class Store:
    """Read a store in the published scTab layout (ours or the downloaded one) without loading it whole."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        if not self.root.is_dir():
            raise StoreError(f"store {self.root} does not exist")
        var_path = self.root / "var.parquet"
        if not var_path.exists():
            raise StoreError(f"store {self.root} has no var.parquet")
        self.var = _read_parquet_frame(var_path)
        for c in ("feature_id", "feature_name"):
            if c not in self.var.columns:
                raise StoreError(f"{var_path} lacks column {c!r} (has {list(self.var.columns)})")
        if len(self.var) == 0:
            raise StoreError(f"{var_path} lists no genes: a store needs at least one")
        ids = self.var["feature_id"]
        missing = ids.isna() | (ids.astype(str).str.strip() == "")
        if missing.any():
            raise StoreError(f"{var_path}: {int(missing.sum())} gene(s) without a feature_id (first at row "
                             f"{int(np.flatnonzero(missing.to_numpy())[0])})")
        dup = ids.astype(str).duplicated(keep=False)
        if dup.any():
            raise StoreError(f"{var_path}: duplicate feature_id {ids[dup].astype(str).iloc[0]!r} "
                             f"({int(dup.sum())} rows share an id): genes must be unique")
        self._splits: dict[str, StoreSplit] = {}

    # metadata ---------------------------------------------------------------
    @property
    def n_genes(self) -> int:
        return int(len(self.var))

    def lookup(self, column: str) -> pd.DataFrame:
        path = self.root / "categorical_lookup" / f"{column}.parquet"
        if not path.exists():
            raise StoreError(f"store {self.root} has no lookup for {column!r} ({path})")
        df = _read_parquet_frame(path)
        if "label" not in df.columns:
            raise StoreError(f"{path} lacks column 'label'")
        return df

    @property
    def classes(self) -> list[str]:
        return self.lookup("cell_type")["label"].astype(str).tolist()

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    def class_weights(self) -> np.ndarray:
        return self._npy("class_weights.npy", (self.n_classes,))

    def child_matrix(self) -> np.ndarray:
        return self._npy("cell_type_hierarchy/child_matrix.npy", (self.n_classes, self.n_classes))

    def train_subset(self, name: str) -> np.ndarray:
        path = self.root / "train_subsets" / f"{name}.npy"
        if not path.exists():
            folder = self.root / "train_subsets"
            avail = sorted(p.stem for p in folder.glob("*.npy")) if folder.exists() else []
            raise StoreError(f"store {self.root} has no train subset {name!r}; available: {avail or 'none'}")
        return _load_npy(path)

    def report(self) -> dict:
        path = self.root / "store_report.json"
        if not path.exists():
            return {}
        try:
            return json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise StoreError(f"cannot read {path}: {e}") from e

    def _npy(self, rel: str, shape: tuple) -> np.ndarray:
        path = self.root / rel
        if not path.exists():
            raise StoreError(f"store {self.root} has no {rel}")
        arr = _load_npy(path)
        if arr.shape != shape:
            raise StoreError(f"{path} has shape {arr.shape}, expected {shape}")
        return arr

    # rows -------------------------------------------------------------------
    def split(self, name: str) -> StoreSplit:
        if name in self._splits:
            return self._splits[name]
        d = self.root / name
        files = sorted(d.glob("part.*.parquet"), key=lambda p: int(p.name.split(".")[1])) if d.is_dir() else []
        if not files:
            raise StoreError(f"store {self.root} has no parquet parts under {name}/")
        groups, n = [], 0
        for f in files:
            try:
                meta = pq.ParquetFile(f).metadata
            except Exception as e:
                raise StoreError(f"cannot read parquet part {f}: {e}") from e
            for i in range(meta.num_row_groups):
                rows = meta.row_group(i).num_rows
                groups.append((f, i, rows))
                n += rows
            try:
                schema = meta.schema.to_arrow_schema()
            except Exception as e:
                raise StoreError(f"cannot read the schema of parquet part {f}: {e}") from e
            if "X" not in schema.names or "cell_type" not in schema.names:
                raise StoreError(f"parquet part {f} lacks column 'X' or 'cell_type' (has {schema.names})")
            _check_types(f, schema)
        s = StoreSplit(name=name, files=files, n_rows=n, row_groups=groups)
        self._splits[name] = s
        return s

    @property
    def has_sparse(self) -> bool:
        """Whether the sparse layout (sparse/<split>/part.N.arrow) was written beside the dense one."""
        return (self.root / SPARSE_DIR).is_dir()

    def sparse_split(self, name: str) -> StoreSplit:
        """The sparse layout of a split, checked to have exactly the dense split's files and row groups."""
        key = f"{SPARSE_DIR}/{name}"
        if key in self._splits:
            return self._splits[key]
        dense = self.split(name)
        if not self.has_sparse:
            raise StoreError(f"store {self.root} has no sparse layout ({SPARSE_DIR}/): write it with "
                             "sctab.data.store.write_sparse_layout or `store.layout: both`")
        groups, files = [], []
        for f in dense.files:
            sf = self.root / SPARSE_DIR / name / sparse_part_name(f)
            try:
                with pa.memory_map(str(sf)) as mm:
                    reader = pa.ipc.open_file(mm)
                    names = reader.schema.names
                    sizes = [reader.get_batch(i).num_rows for i in range(reader.num_record_batches)]
            except Exception as e:
                raise StoreError(f"cannot read sparse part {sf}: {e}") from e
            if "indices" not in names or "values" not in names or "cell_type" not in names:
                raise StoreError(f"sparse part {sf} lacks column 'indices', 'values' or 'cell_type' (has {names})")
            files.append(sf)
            groups += [(sf, i, n) for i, n in enumerate(sizes)]
        if [g[2] for g in groups] != [g[2] for g in dense.row_groups]:
            raise StoreError(f"sparse layout of {name!r} in {self.root} has row groups of other sizes than the "
                             "dense parts: it is stale, rebuild it with write_sparse_layout")
        s = StoreSplit(name=key, files=files, n_rows=dense.n_rows, row_groups=groups)
        self._splits[key] = s
        return s

    def read_row_group(self, path: Path, index: int, columns=("X", "cell_type")) -> dict[str, np.ndarray]:
        """One row group as numpy: X -> (rows, n_genes) float32, other columns 1-d."""
        try:
            tbl = open_parquet(path).read_row_group(index, columns=list(columns))
        except Exception as e:
            raise StoreError(f"cannot read row group {index} of {path}: {e}") from e
        out = {}
        for c in columns:
            col = tbl.column(c)
            if c == "X":
                out[c] = list_column_to_dense(col, self.n_genes, path)
            else:
                out[c] = col.to_numpy()
        return out

    def iter_row_groups(self, split: str, columns=("X", "cell_type")):
        for path, i, _ in self.split(split).row_groups:
            yield self.read_row_group(path, i, columns)

    def read_obs(self, split: str, columns=("cell_type",)) -> pd.DataFrame:
        """Non-X columns of a split (cheap: parquet reads only the named columns)."""
        tables = []
        for f in self.split(split).files:
            try:
                tables.append(open_parquet(f).read(columns=list(columns)))
            except Exception as e:
                raise StoreError(f"cannot read columns {list(columns)} of {f}: {e}") from e
        try:
            return pa.concat_tables(tables).to_pandas()
        except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
            raise StoreError(f"the parts of split {split!r} disagree on columns {list(columns)}: {e}") from e


def _read_parquet_frame(path: Path) -> pd.DataFrame:
    try:
        return open_parquet(path).read().to_pandas()
    except Exception as e:  # truncated, not parquet at all, a failed page checksum: ArrowInvalid, OSError, ...
        raise StoreError(f"cannot read {path}: {e}") from e


def _load_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:  # truncated, not .npy, or pickled (refused)
        raise StoreError(f"cannot read {path}: {e}") from e


def _check_types(path: Path, schema: pa.Schema) -> None:
    """X is a list of floating-point values per cell, cell_type an integer code: anything else is refused."""
    x = schema.field("X").type
    if not (pa.types.is_list(x) or pa.types.is_large_list(x)) or not pa.types.is_floating(x.value_type):
        raise StoreError(f"parquet part {path}: column X has type {x}, expected list<float> (one list of "
                         f"normalised expression values per cell)")
    ct = schema.field("cell_type").type
    if not pa.types.is_integer(ct):
        raise StoreError(f"parquet part {path}: column cell_type has type {ct}, expected integer class codes")


def list_column_to_dense(col: pa.ChunkedArray, n_genes: int, where: Path | str = "") -> np.ndarray:
    """Flatten a list<float32> column into a (rows, n_genes) array, checking every row's length."""
    arrs = []
    t = col.type
    if not (pa.types.is_list(t) or pa.types.is_large_list(t)) or not (
            pa.types.is_floating(t.value_type) or pa.types.is_integer(t.value_type)):
        raise StoreError(f"{where}: column X has type {t}, expected list<float>")
    for chunk in col.chunks:
        if len(chunk) == 0:
            continue
        if chunk.null_count:
            row = int(np.flatnonzero(chunk.is_null().to_numpy(zero_copy_only=False))[0])
            raise StoreError(f"{where}: row {row} of X is null (every cell needs {n_genes} values)")
        offsets = chunk.offsets.to_numpy()
        lengths = np.diff(offsets)
        bad = np.flatnonzero(lengths != n_genes)
        if bad.size:
            raise StoreError(f"{where}: row {int(bad[0])} of X has {int(lengths[bad[0]])} values, "
                             f"expected {n_genes} (the length of var.parquet)")
        vals = chunk.values.to_numpy(zero_copy_only=False)[offsets[0]:offsets[-1]]
        arrs.append(vals.reshape(len(chunk), n_genes).astype(np.float32, copy=False))
    return np.concatenate(arrs) if arrs else np.empty((0, n_genes), np.float32)
