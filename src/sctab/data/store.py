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

The writer is :mod:`sctab.data.store_writer`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

if TYPE_CHECKING:
    pass

SPARSE_DIR = "sparse"
CODE_COLUMNS = ["cell_type", "dataset_id", "donor_id", "assay", "development_stage", "disease", "tissue",
                "tissue_general", "tech_sample"]


class StoreError(ValueError):
    """The store on disk is missing pieces or does not match what the reader expects."""


# ----------------------------------------------------------------------------------------------- checksums
# Every parquet file of the store carries a CRC32 per data page (the format's optional page checksum), and
# every read verifies it: a flipped bit in a page is an error naming the file, not other numbers. Files
# written before checksums existed have none and read as before.
def open_parquet(path: str | Path) -> pq.ParquetFile:
    """A store part opened so that every page read is checked against its checksum."""
    return pq.ParquetFile(path, page_checksum_verification=True)


def sparse_part_name(dense_part: Path) -> str:
    """part.N.parquet -> part.N.arrow"""
    return Path(dense_part).stem + ".arrow"


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
                             "sctab.data.store_writer.write_sparse_layout or `store.layout: both`")
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
