"""Loader anchors (issue 26): peers' training loaders on the very cells our loaders read, for the bench.

The bench store's train split (same rows, normalised float32 values, genes in order, cell type codes) is
written once per anchor in that anchor's own format, each write timed: an h5ad for scDataset, a SOMA
experiment for tiledbsoma-ml. Each anchor is then read as its documentation recommends for throughput
(scDataset: block shuffling, fetch_factor 16, DataLoader workers with prefetch; tiledbsoma-ml: its
ExperimentDataset with in-dataset batching through experiment_dataloader), yielding the same output as ours:
(X as torch sparse CSR or dense float32, int64 labels) batches of the bench's batch size.

Beside the rate: `shuffle_quality` (how label-mixed the batches are, 1 = as mixed as a full shuffle), the same
for ours, and `cell_mismatches` (every cell of an epoch against the source, value for value), so a row
cannot be met on wrong data. The anchors' packages live in .venv-anchors (`make anchors-env`), never in the
project's venv; they are imported inside the functions that use them.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections import Counter
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import scipy.sparse as sp
import torch

from sctab.data.csr_rows import CSRRows
from sctab.data.group_readers import SparseGroupReader
from sctab.data.loaders import make_loader
from sctab.data.store import Store

ANCHORS = ("scdataset", "tiledbsoma_ml", "annbatch")
#: what each anchor reads (the suffix of its format under the anchors cache)
FORMATS = {"scdataset": "h5ad", "tiledbsoma_ml": "soma", "annbatch": "zarr"}
TITLES = {"scdataset": "scDataset", "tiledbsoma_ml": "tiledbsoma-ml", "annbatch": "annbatch"}
#: the venv each anchor runs in and the make target that builds it (annbatch needs Python >= 3.12)
VENVS = {"scdataset": (".venv-anchors", "anchors-env"), "tiledbsoma_ml": (".venv-anchors", "anchors-env"),
         "annbatch": (".venv-annbatch", "annbatch-env")}
#: annbatch's README loader settings (chunks of 32 cells, 256 chunks preloaded and shuffled together)
ANNBATCH_CHUNK, ANNBATCH_PRELOAD = 32, 256
#: the obs column holding the cell type codes in every written format
LABEL = "cell_type"
#: scDataset's documented defaults for throughput: fetch_factor 16 (prefetch fetch_factor + 1); block size 16
SCD_FETCH_FACTOR, SCD_BLOCK = 16, 16
SOMA_MEASUREMENT, SOMA_LAYER = "RNA", "data"


class AnchorError(RuntimeError):
    """An anchor could not be written or read as asked (named in the message)."""


# ------------------------------------------------------------------------------------------- source cells
def source_cells(store: Store, split: str = "train") -> tuple[sp.csr_matrix, np.ndarray, list[str]]:
    """The split's cells in store order as (CSR float32 cells x genes, int64 labels, gene ids in order),
    read from the sparse layout (the bytes our sparse loader reads)."""
    reader = SparseGroupReader(store, split, ())
    parts = [reader.read(g, None) for g in range(len(reader.split.row_groups))]
    x = CSRRows.concat([p["x"] for p in parts])
    m = sp.csr_matrix((x.values, x.indices, x.indptr), shape=(len(x), store.n_genes))
    return m, np.concatenate([p["y"] for p in parts]).astype(np.int64), _var_ids(store)


def _var_ids(store: Store) -> list[str]:
    """The store's gene ids in column order (var.parquet)."""
    import pandas as pd

    return pd.read_parquet(store.root / "var.parquet")["feature_id"].astype(str).tolist()


def _anndata(x: sp.csr_matrix, y: np.ndarray, genes: list[str]):
    import anndata as ad
    import pandas as pd

    obs = pd.DataFrame({LABEL: y}, index=[str(i) for i in range(x.shape[0])])
    return ad.AnnData(X=x, obs=obs, var=pd.DataFrame(index=genes))


def write_h5ad(store: Store, path: Path) -> None:
    """scDataset's format: one h5ad, X as CSR (anndata's backed mode reads row ranges of it)."""
    _anndata(*source_cells(store)).write_h5ad(path)


def write_soma(store: Store, path: Path) -> None:
    """tiledbsoma-ml's format: a SOMA experiment, written by tiledbsoma.io.from_anndata."""
    import tiledbsoma.io

    tiledbsoma.io.from_anndata(str(path), _anndata(*source_cells(store)), measurement_name=SOMA_MEASUREMENT,
                               X_layer_name=SOMA_LAYER)


def _zarrs() -> None:
    """annbatch's docs: the zarrs codec pipeline (Rust, threads = cores) for local-filesystem throughput."""
    import zarr

    zarr.config.set({"codec_pipeline.path": "zarrs.ZarrsCodecPipeline"})


def write_annbatch(store: Store, path: Path) -> None:
    """annbatch's format: a DatasetCollection of sharded zarr v3, written by its add_adatas from an h5ad of
    the cells (timed together: annbatch pre-shuffles the cells as it writes, as its docs recommend)."""
    from annbatch import DatasetCollection

    _zarrs()
    path.mkdir(parents=True)
    h5ad = path / "source.h5ad"
    write_h5ad(store, h5ad)
    DatasetCollection(str(path / "collection.zarr")).add_adatas(adata_paths=[str(h5ad)], shuffle=True,
                                                                 rng=np.random.default_rng(0))
    h5ad.unlink()


WRITERS = {"h5ad": write_h5ad, "soma": write_soma, "zarr": write_annbatch}


def anchor_format(store: Store, anchor: str, cache: Path) -> tuple[Path, float]:
    """The anchor's copy of the store's train split (written once, then reused) and the seconds its write
    took (recorded beside it). Written under a temporary name and renamed, so a failed write leaves nothing."""
    if anchor not in FORMATS:
        raise AnchorError(f"unknown anchor {anchor!r}; known: {', '.join(FORMATS)}")
    fmt = FORMATS[anchor]
    folder = Path(cache) / "anchors" / store.root.name
    path, meta = folder / f"train.{fmt}", folder / f"train.{fmt}.json"
    if path.exists() and meta.exists():
        return path, float(json.loads(meta.read_text())["write_s"])
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".tmp-{os.getpid()}-train.{fmt}"
    _remove(tmp)
    try:
        t = time.perf_counter()
        WRITERS[fmt](store, tmp)
        write_s = time.perf_counter() - t
        _remove(path)
        tmp.rename(path)
    except Exception as e:
        _remove(tmp)
        raise AnchorError(f"writing the {fmt} of {store.root} for {anchor} failed: {e}") from e
    meta.write_text(json.dumps({"write_s": write_s, "format": fmt}))
    return path, write_s


def _remove(p: Path) -> None:
    if p.is_dir():
        shutil.rmtree(p)
    elif p.exists():
        p.unlink()


# ------------------------------------------------------------------------------------------- loaders
def _torch_x(m, x_format: str) -> torch.Tensor:
    """A scipy CSR (or dense) batch as ours delivers it: torch sparse CSR, or dense float32."""
    if x_format == "dense":
        d = m.toarray() if sp.issparse(m) else np.asarray(m)
        return torch.from_numpy(np.ascontiguousarray(d, dtype=np.float32))
    m = sp.csr_matrix(m, dtype=np.float32)
    itype = m.indices.dtype  # scipy's int32 kept, as ours keeps the store's: no copy charged to the anchor
    return torch.sparse_csr_tensor(torch.from_numpy(m.indptr.astype(itype, copy=False)),
                                   torch.from_numpy(m.indices), torch.from_numpy(m.data),
                                   size=m.shape, check_invariants=False)


class BackedH5ad:
    """A backed AnnData opened lazily in each process that reads it (DataLoader workers each open their own
    handle: an h5py file must not cross a fork); indexing returns the rows' (CSR X, labels)."""

    def __init__(self, path: Path):
        import h5py

        self.path = str(path)
        with h5py.File(self.path, "r") as f:
            self.n = int(f["X"].attrs["shape"][0])
        self._pid, self._ad = None, None

    def __len__(self) -> int:
        return self.n

    def __getstate__(self):
        return {"path": self.path, "n": self.n, "_pid": None, "_ad": None}

    def __getitem__(self, idx):
        import anndata as ad

        if self._pid != os.getpid():
            self._ad, self._pid = ad.read_h5ad(self.path, backed="r"), os.getpid()
            self._y = self._ad.obs[LABEL].to_numpy().astype(np.int64)
        idx = np.asarray(idx)
        return _Fetched(sp.csr_matrix(self._ad[idx].X), self._y[idx])


class _Fetched:
    """One fetch of scDataset (fetch_factor batches of rows, CSR + labels), cut into batches by row index
    (scDataset's MultiIndexable needs len() of its parts, which scipy's sparse matrices refuse)."""

    def __init__(self, x: sp.csr_matrix, y: np.ndarray):
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, rows):
        return self.x[rows], self.y[rows]


def _workers() -> int:
    """DataLoader workers for the anchors: the machine's cores (the threads ours may use)."""
    return max(1, os.cpu_count() or 1)


def scdataset_loader(path: Path, batch_size: int, x_format: str, seed: int = 0):
    """scDataset over the backed h5ad, as its docs recommend: BlockShuffling, fetch_factor 16, a DataLoader
    with batch_size=None, workers and prefetch_factor fetch_factor + 1 (persistent: each epoch reshuffles)."""
    from scdataset import BlockShuffling, scDataset
    from torch.utils.data import DataLoader

    def to_torch(b):
        return _torch_x(b[0], x_format), torch.from_numpy(np.asarray(b[1], dtype=np.int64))

    ds = scDataset(BackedH5ad(path), BlockShuffling(block_size=SCD_BLOCK), batch_size=batch_size,
                   fetch_factor=SCD_FETCH_FACTOR, batch_transform=to_torch, seed=seed)
    return DataLoader(ds, batch_size=None, num_workers=_workers(), prefetch_factor=SCD_FETCH_FACTOR + 1,
                      persistent_workers=True)


def _soma_batch(x_format: str):
    def to_torch(mb):
        x, obs = mb
        return _torch_x(x, x_format), torch.from_numpy(obs[LABEL].to_numpy().astype(np.int64))
    return to_torch


class _Mapped:
    """Applies `fn` to every item of a DataLoader (re-iterable, unlike map())."""

    def __init__(self, loader, fn):
        self.loader, self.fn = loader, fn

    def __iter__(self):
        return (self.fn(b) for b in self.loader)


def tiledbsoma_ml_loader(path: Path, batch_size: int, x_format: str, seed: int = 0):
    """tiledbsoma-ml's ExperimentDataset (batching inside the dataset, shuffled, its default shuffle chunk and
    IO batch sizes) through experiment_dataloader with one worker per core. CSR (return_sparse_X) reads in
    the calling process: tiledbsoma-ml refuses sparse output with DataLoader workers (torch cannot pass
    sparse tensors between processes, it says); TileDB's own threads still read in parallel."""
    import tiledbsoma
    from tiledbsoma_ml import ExperimentDataset, experiment_dataloader

    with tiledbsoma.Experiment.open(str(path)) as exp, exp.axis_query(SOMA_MEASUREMENT) as q:
        ds = ExperimentDataset(q, layer_name=SOMA_LAYER, obs_column_names=[LABEL], batch_size=batch_size,
                               shuffle=True, seed=seed, return_sparse_X=x_format == "csr")
    workers = anchor_workers("tiledbsoma_ml", x_format)
    dl = experiment_dataloader(ds, num_workers=workers, persistent_workers=workers > 0)
    return _Mapped(dl, _soma_batch(x_format)), ds


def anchor_workers(anchor: str, x_format: str) -> int:
    """DataLoader worker processes the anchor reads with (their memory is not in the row's peak RSS)."""
    return 0 if anchor == "annbatch" or (anchor, x_format) == ("tiledbsoma_ml", "csr") else _workers()


def anchor_loader(anchor: str, path: Path, batch_size: int, x_format: str, seed: int = 0):
    """A re-iterable anchor loader whose every pass is one shuffled epoch of (x, y) batches."""
    if x_format not in ("csr", "dense"):
        raise AnchorError(f"x_format must be 'csr' or 'dense', got {x_format!r}")
    if anchor == "scdataset":
        return scdataset_loader(path, batch_size, x_format, seed)
    if anchor == "tiledbsoma_ml":
        loader, ds = tiledbsoma_ml_loader(path, batch_size, x_format, seed)
        return _EpochSetting(loader, ds)
    if anchor == "annbatch":
        return annbatch_loader(path, batch_size, x_format, seed)
    raise AnchorError(f"unknown anchor {anchor!r}; known: {', '.join(ANCHORS)}")


def annbatch_loader(path: Path, batch_size: int, x_format: str, seed: int = 0):
    """annbatch's Loader over the collection, as its README shows: zarrs pipeline, chunk_size 32,
    preload_nchunks 256, only the label column of obs loaded, no DataLoader workers (annbatch reads with its
    own threads and advises against workers). CSR: its own torch output (to="torch"). Dense: its scipy output
    densified by scipy, as for the other anchors and ours; torch's CSR to_dense (its README's step, on the GPU
    there) ran ~35x slower on 2 threads than on 1 on this shared 2-core machine, which measured torch."""
    import anndata as ad
    import zarr
    from annbatch import DatasetCollection, Loader

    _zarrs()

    def load(g: zarr.Group):
        return ad.AnnData(X=ad.io.sparse_dataset(g["X"]), obs=ad.io.read_elem(g["obs"])[[LABEL]])

    with ad.settings.override(remove_unused_categories=False):
        ld = Loader(batch_size=batch_size, chunk_size=ANNBATCH_CHUNK, preload_nchunks=ANNBATCH_PRELOAD,
                    shuffle=True, to="torch" if x_format == "csr" else None, preload_to_gpu=False,
                    rng=np.random.default_rng(seed))
        ld = ld.use_collection(DatasetCollection(str(Path(path) / "collection.zarr")), load_adata=load)

    def to_out(b):
        x = _torch_x(b["X"], "dense") if x_format == "dense" else b["X"].to_sparse_csr().to(torch.float32)
        return x, torch.from_numpy(b["obs"][LABEL].to_numpy().astype(np.int64))
    return _Mapped(ld, to_out)


class _EpochSetting:
    """Calls set_epoch before each pass, as tiledbsoma-ml's docs ask. (0.1.0 shuffles from the seed alone,
    the epoch unused: every epoch has the same order; its workers, persistent, would not see it anyway.)"""

    def __init__(self, loader, ds):
        self.loader, self.ds, self.epoch = loader, ds, 0

    def __iter__(self):
        self.ds.set_epoch(self.epoch)
        self.epoch += 1
        return iter(self.loader)


class OurLoader:
    """Our sparse loader as (x, y) pairs, a new shuffle each pass (set_epoch), like the anchors."""

    def __init__(self, store: Store, batch_size: int, x_format: str, block_row_groups: int, seed: int = 0):
        self.ld = make_loader(store, "train", backend="sparse", x_format=x_format, batch_size=batch_size,
                              shuffle=True, seed=seed, block_row_groups=block_row_groups)
        self.epoch = 0

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self.ld.set_epoch(self.epoch)
        self.epoch += 1
        return ((b.x, b.y) for b in self.ld)


# ------------------------------------------------------------------------------------------- measures
def label_entropy(y: np.ndarray) -> float:
    """Shannon entropy (nats) of the labels of one batch."""
    _, counts = np.unique(np.asarray(y), return_counts=True)
    p = counts / counts.sum()
    return float(-(p * np.log(p)).sum())


def shuffle_quality(batches: Iterable[np.ndarray], seed: int = 0, draws: int = 8) -> float:
    """Mean per-batch label entropy of an epoch's batches over that of fully shuffled batches (the same
    labels randomly permuted and cut into batches of the same sizes, mean over `draws` permutations).
    1 = as mixed as a full shuffle; a label-sorted epoch is near 0. NaN when no batch has entropy to lose."""
    batches = [np.asarray(b) for b in batches]
    sizes = np.cumsum([len(b) for b in batches])[:-1]
    ours = float(np.mean([label_entropy(b) for b in batches]))
    allv, rng = np.concatenate(batches), np.random.default_rng(seed)
    full = float(np.mean([np.mean([label_entropy(b) for b in np.split(rng.permutation(allv), sizes)])
                          for _ in range(draws)]))
    return ours / full if full > 0 else float("nan")


def _row_keys(x: torch.Tensor, y: torch.Tensor) -> list[bytes]:
    """One digest per cell of a torch batch (CSR or dense)."""
    if x.layout == torch.sparse_csr:
        m = sp.csr_matrix((x.values().numpy(), x.col_indices().numpy(), x.crow_indices().numpy()),
                          shape=tuple(x.shape))
    else:
        m = sp.csr_matrix(x.numpy())
    return _csr_keys(m, y.numpy())


def _csr_keys(m: sp.csr_matrix, labels: np.ndarray) -> list[bytes]:
    """One digest per cell: its label, non-zero gene indices and float32 values, exactly."""
    m = m.copy()
    m.sort_indices()
    out = []
    for i, label in enumerate(np.asarray(labels).tolist()):
        a, b = m.indptr[i], m.indptr[i + 1]
        h = hashlib.blake2b(np.int64(label).tobytes(), digest_size=16)
        h.update(m.indices[a:b].astype(np.int64).tobytes())
        h.update(m.data[a:b].astype(np.float32).tobytes())
        out.append(h.digest())
    return out


def cell_mismatches(batches: Iterable[tuple[torch.Tensor, torch.Tensor]], source: sp.csr_matrix,
                    labels: np.ndarray) -> int:
    """Cells an epoch got wrong against the source: missing, repeated or with any other value or label
    (the size of the multiset difference both ways, 0 when the epoch holds every source cell once, exactly)."""
    got = Counter()
    for x, y in batches:
        if x.shape[1] != source.shape[1]:
            return max(len(labels), 1)  # another gene count: nothing matches
        got.update(_row_keys(x, y))
    want = Counter(_csr_keys(source, labels))
    return sum(((got - want) + (want - got)).values())


def drop_page_cache(root: Path) -> int:
    """Ask the kernel to drop every file under `root` from the page cache (posix_fadvise DONTNEED after a
    sync; no root needed, unlike /proc/sys/vm/drop_caches): the cold pass. Returns the files advised."""
    root, n = Path(root), 0
    for p in ([root] if root.is_file() else sorted(q for q in root.rglob("*") if q.is_file())):
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            n += 1
        finally:
            os.close(fd)
    return n


# ------------------------------------------------------------------------------------------- timing
def _cpu_s() -> float:
    """CPU seconds of this process and its live children (DataLoader workers do an anchor's reading)."""
    import psutil

    total = time.process_time()  # this process to the nanosecond (psutil's ticks are 10 ms: an epoch's scale)
    for c in psutil.Process().children(recursive=True):
        try:
            total += sum(c.cpu_times()[:2])
        except psutil.Error:  # gone between listing and asking
            pass
    return total


def measure(loader, files: Path, repeats: int, cold: bool, source: sp.csr_matrix, labels: np.ndarray) -> dict:
    """Rates (cells/s, wall and CPU-time) over `repeats` epochs, after one untimed epoch that starts the
    workers and checks every cell against the source. Cold: every file under `files` is dropped from the page
    cache (drop_page_cache) before each timed epoch; warm: the untimed epoch has read them in."""
    mismatches = cell_mismatches(iter(loader), source, labels)
    cores = os.cpu_count() or 1
    wall, cpu, quality, advised = [], [], [], 0
    for _ in range(repeats):
        if cold:
            advised = drop_page_cache(files)
        ys, n = [], 0
        t, c = time.perf_counter(), _cpu_s()
        for _, y in loader:
            ys.append(y.numpy())
            n += len(y)
        wall.append(n / (time.perf_counter() - t))
        cpu.append(n / max((_cpu_s() - c) / cores, 1e-9))
        quality.append(shuffle_quality(ys))
    info = {"shuffle quality (batch label entropy / full shuffle's)": float(np.mean(quality))}
    if cold:
        info["files dropped from the page cache per epoch"] = advised
    return {"samples": wall, "cpu_samples": cpu, "mismatches": mismatches, "info": info}
