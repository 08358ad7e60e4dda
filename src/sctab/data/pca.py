"""The XGBoost baseline's input: an incremental PCA fitted on the train split only (paper, Methods "XGBoost model").

The store is bigger than memory, so the fit streams the train split one row group at a time into
`batch_size`-row batches for `IncrementalPCA.partial_fit`, and the projection of every split is written
row group by row group into memory-mapped `.npy` files. Memory: two batch buffers and one row group, plus
sklearn's SVD of one (n_components + batch_size) x n_genes matrix. Small batches cost some accuracy
(IncrementalPCA truncates to n_components after each), so batch_size should be well above n_components.

The outputs are byte-identical run to run for the same store and parameters, on any number of cores: the
fit and the projection run with the BLAS pinned to ``pca.blas_threads`` threads (default 1), because
OpenBLAS's float32 matrix products and SVD round differently with 1 and with 2+ threads (measured: last-bit
differences, 5e-5 in the components). XGBoost's histogram binning turns such differences into other trees:
on tiny, test macro F1 0.7542 on a 2-thread fit and 0.7472 on a 1-thread fit, the booster itself
bit-identical run to run. Timings are returned and printed, not written. Different CPU families may still
pick different OpenBLAS kernels (``OPENBLAS_CORETYPE`` pins one).

Output folder (written atomically: complete or absent):
    pca.npz                       the projection (PCAModel; plain arrays, readable without pickle)
    <split>.npy                   float32 (rows, n_components), rows in the store's file order
    <split>_cell_type.npy         int64 cell type codes, same order
    report.json                   components, genes, rows per split, explained variance, BLAS threads
"""

from __future__ import annotations

import time
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from sctab.data.split import SPLITS
from sctab.data.store import Store
from sctab.io import atomic_dir, atomic_file, write_json

MODEL_NAME = "pca.npz"
REPORT_NAME = "report.json"
_FORMAT = 1  # bump when pca.npz changes layout
_NPZ_KEYS = ("format", "components", "mean", "explained_variance", "explained_variance_ratio", "n_samples_seen",
             "feature_id")


class PCAError(ValueError):
    """The PCA cannot be fitted, saved, loaded or applied as asked."""


# the one count every machine has (a count above the cores spins: 10x slower on 2 busy cores). On a many-core
# machine (census profile) one thread is slower than all of them: pca.blas_threads trades that back, the
# output then reproducible only with the same count
BLAS_THREADS = 1


@contextmanager
def pinned_blas(threads: int = BLAS_THREADS):
    """Every BLAS the fit uses (numpy's and scipy's OpenBLAS, or MKL) limited to ``threads`` threads.

    threadpoolctl only reaches libraries already loaded, so scipy.linalg and sklearn are imported first."""
    import scipy.linalg  # noqa: F401
    import sklearn.decomposition  # noqa: F401
    from threadpoolctl import threadpool_info, threadpool_limits

    if int(threads) < 1:
        raise PCAError(f"blas_threads must be at least 1 (got {threads})")
    with threadpool_limits(limits=int(threads), user_api="blas"):
        loose = [i for i in threadpool_info() if i["user_api"] == "blas" and i["num_threads"] != int(threads)]
        if loose:
            raise PCAError(f"could not pin the BLAS to {threads} thread(s): {[i['filepath'] for i in loose]}")
        yield


# ------------------------------------------------------------------------------------------------- fit
def _check_sizes(n_components: int, batch_size: int, n_genes: int, n_train: int) -> None:
    if n_components < 1:
        raise PCAError(f"n_components must be at least 1 (got {n_components})")
    if n_components > n_genes:
        raise PCAError(f"n_components={n_components} exceeds the store's {n_genes} genes")
    if batch_size < n_components:
        raise PCAError(f"batch_size={batch_size} is smaller than n_components={n_components}: every "
                       "IncrementalPCA batch needs at least n_components rows")
    if n_train < n_components:
        raise PCAError(f"the train split has {n_train} rows, fewer than n_components={n_components}")


def fit_pca(store: Store, n_components: int, batch_size: int, progress: bool = True,
            blas_threads: int = BLAS_THREADS):
    """An sklearn IncrementalPCA fitted on the train split, streamed in `batch_size`-row batches.

    Every train row is used: a final remainder shorter than `n_components` (sklearn's minimum batch) is
    appended to the batch before it, which is held back until the next one is known to be long enough.
    The BLAS runs on ``blas_threads`` threads, so the result does not depend on the machine's cores.
    """
    with pinned_blas(blas_threads):
        return _fit_pca(store, n_components, batch_size, progress)


def _fit_pca(store: Store, n_components: int, batch_size: int, progress: bool):
    from sklearn.decomposition import IncrementalPCA

    n_components, batch_size = int(n_components), int(batch_size)
    train = store.split("train")
    n_genes = store.n_genes
    _check_sizes(n_components, batch_size, n_genes, train.n_rows)

    # two reusable buffers with room for the longest remainder that may be merged into them
    cap = batch_size + n_components - 1
    filling = np.empty((cap, n_genes), dtype=np.float32)
    held = np.empty_like(filling)
    held_rows = 0  # rows of the held-back full batch (0: none yet)
    fill = 0
    pca = IncrementalPCA(n_components=n_components, copy=False)  # our buffers are scratch space
    seen = 0
    bar = tqdm(total=train.n_rows, desc="pca fit", unit="cells", disable=None if progress else True)
    for (path, index, n_rows), part in zip(train.row_groups, store.iter_row_groups("train", ("X",))):
        x = part["X"]
        if len(x) != n_rows:
            raise PCAError(f"row group {index} of {path} has {len(x)} rows, its metadata says {n_rows}")
        seen += n_rows
        start = 0
        while start < n_rows:
            take = min(batch_size - fill, n_rows - start)
            filling[fill:fill + take] = x[start:start + take]
            fill += take
            start += take
            if fill == batch_size:  # a full batch: fit the held one, hold this one
                if held_rows:
                    pca.partial_fit(held[:held_rows])
                filling, held, held_rows, fill = held, filling, batch_size, 0
        bar.update(n_rows)
    bar.close()
    if seen != train.n_rows:
        raise PCAError(f"read {seen} train rows, the store's metadata says {train.n_rows}")

    if fill and held_rows and fill < n_components:  # too short on its own: merge into the held batch
        held[held_rows:held_rows + fill] = filling[:fill]
        held_rows, fill = held_rows + fill, 0
    if held_rows:
        pca.partial_fit(held[:held_rows])
    if fill:  # >= n_components here: checked above, or train has fewer than batch_size rows
        pca.partial_fit(filling[:fill])
    if pca.n_samples_seen_ != train.n_rows:  # guards the batching logic above
        raise PCAError(f"IncrementalPCA saw {pca.n_samples_seen_} rows, train has {train.n_rows}")
    return pca


# ----------------------------------------------------------------------------------------------- model
@dataclass
class PCAModel:
    """A fitted projection as plain arrays: `transform` equals IncrementalPCA.transform (no whitening)."""

    components: np.ndarray               # float32 (k, n_genes)
    mean: np.ndarray                     # float32 (n_genes,)
    explained_variance: np.ndarray       # float64 (k,)
    explained_variance_ratio: np.ndarray  # float64 (k,)
    n_samples_seen: int
    feature_id: list[str]

    def __post_init__(self):
        self.components = np.ascontiguousarray(self.components, dtype=np.float32)
        self.mean = np.ascontiguousarray(self.mean, dtype=np.float32)
        self.explained_variance = np.asarray(self.explained_variance, dtype=np.float64)
        self.explained_variance_ratio = np.asarray(self.explained_variance_ratio, dtype=np.float64)
        self.n_samples_seen = int(self.n_samples_seen)
        self.feature_id = [str(f) for f in self.feature_id]
        k = self.components.shape[0] if self.components.ndim == 2 else -1
        if (self.components.ndim != 2 or self.mean.shape != (self.components.shape[1],)
                or self.explained_variance.shape != (k,) or self.explained_variance_ratio.shape != (k,)
                or len(self.feature_id) != self.components.shape[1]):
            raise PCAError(f"inconsistent PCA arrays: components {self.components.shape}, mean {self.mean.shape}, "
                           f"explained variance {self.explained_variance.shape}, "
                           f"ratio {self.explained_variance_ratio.shape}, {len(self.feature_id)} feature ids")
        # project-then-centre (as sklearn does): the offset is one k-vector, computed once in float64
        self._offset = (self.mean.astype(np.float64) @ self.components.T.astype(np.float64)).astype(np.float32)

    @property
    def n_components(self) -> int:
        return int(self.components.shape[0])

    @property
    def n_genes(self) -> int:
        return int(self.components.shape[1])

    def transform(self, X) -> np.ndarray:
        """(n, n_genes) normalised expression -> (n, k) float32 embedding."""
        X = np.asarray(X)
        if X.ndim != 2 or X.shape[1] != self.n_genes:
            raise PCAError(f"input has shape {X.shape}, the PCA expects (cells, {self.n_genes} genes)")
        Z = X.astype(np.float32, copy=False) @ self.components.T
        Z -= self._offset
        return Z

    @classmethod
    def from_sklearn(cls, pca, feature_ids) -> "PCAModel":
        if not hasattr(pca, "components_"):
            raise PCAError("the sklearn PCA is not fitted")
        if getattr(pca, "whiten", False):
            raise PCAError("whitened PCA is not supported (the paper's embedding is not whitened)")
        return cls(components=pca.components_, mean=pca.mean_, explained_variance=pca.explained_variance_,
                   explained_variance_ratio=pca.explained_variance_ratio_, n_samples_seen=int(pca.n_samples_seen_),
                   feature_id=list(feature_ids))

    def save(self, path: str | Path) -> Path:
        """A plain `.npz` (no pickle), written atomically."""
        path = Path(path)
        with atomic_file(path, "wb") as fh:
            np.savez(fh, format=np.int64(_FORMAT), components=self.components, mean=self.mean,
                     explained_variance=self.explained_variance,
                     explained_variance_ratio=self.explained_variance_ratio,
                     n_samples_seen=np.int64(self.n_samples_seen), feature_id=np.array(self.feature_id, dtype=str))
        return path

    @classmethod
    def load(cls, path: str | Path) -> "PCAModel":
        """Read `pca.npz` (or the folder holding it)."""
        path = Path(path)
        if path.is_dir():
            path = path / MODEL_NAME
        if not path.exists():
            raise PCAError(f"PCA file {path} does not exist (run the pca stage: pipelines/pca.py)")
        try:
            with np.load(path, allow_pickle=False) as z:
                missing = [k for k in _NPZ_KEYS if k not in z.files]
                if missing:
                    raise PCAError(f"PCA file {path} lacks {', '.join(missing)}")
                arrays = {k: z[k] for k in _NPZ_KEYS}
        except PCAError:
            raise
        except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
            raise PCAError(f"cannot read PCA file {path}: {e}") from e
        if int(arrays["format"]) != _FORMAT:
            raise PCAError(f"PCA file {path} has format {int(arrays['format'])}, this code reads {_FORMAT}")
        for k in ("components", "mean"):
            if not np.issubdtype(arrays[k].dtype, np.floating) or not np.isfinite(arrays[k]).all():
                raise PCAError(f"PCA file {path}: {k} is not finite floating point")
        try:
            return cls(components=arrays["components"], mean=arrays["mean"],
                       explained_variance=arrays["explained_variance"],
                       explained_variance_ratio=arrays["explained_variance_ratio"],
                       n_samples_seen=int(arrays["n_samples_seen"]), feature_id=arrays["feature_id"].tolist())
        except PCAError as e:
            raise PCAError(f"PCA file {path}: {e}") from e


# ------------------------------------------------------------------------------------------------ files
def write_pca(store: Store, out_dir: str | Path, n_components: int, batch_size: int, progress: bool = True,
              blas_threads: int = BLAS_THREADS) -> dict:
    """Fit on train, project every split, and write the folder atomically (the same bytes every run).

    Returns the report: report.json's content plus ``seconds`` (timings stay out of the folder)."""
    t0 = time.perf_counter()
    with pinned_blas(blas_threads):
        report = _write_pca(store, out_dir, n_components, batch_size, progress, blas_threads, t0)
    report["seconds"]["total"] = round(time.perf_counter() - t0, 3)
    return report


def _write_pca(store: Store, out_dir, n_components: int, batch_size: int, progress: bool, blas_threads: int,
               t0: float) -> dict:
    sk = fit_pca(store, n_components, batch_size, progress=progress, blas_threads=blas_threads)
    model = PCAModel.from_sklearn(sk, store.var["feature_id"].astype(str).tolist())
    fit_s = time.perf_counter() - t0
    k = model.n_components
    report = {"n_components": k, "n_genes": store.n_genes, "batch_size": int(batch_size),
              "fitted_on": "train", "n_samples_seen": model.n_samples_seen, "blas_threads": int(blas_threads),
              "rows": {}, "explained_variance_ratio": float(model.explained_variance_ratio.sum()),
              "explained_variance_ratio_per_component": model.explained_variance_ratio.tolist()}
    with atomic_dir(out_dir) as tmp:
        model.save(tmp / MODEL_NAME)
        for split in SPLITS:
            s = store.split(split)
            z = np.lib.format.open_memmap(tmp / f"{split}.npy", mode="w+", dtype=np.float32, shape=(s.n_rows, k))
            y = np.lib.format.open_memmap(tmp / f"{split}_cell_type.npy", mode="w+", dtype=np.int64,
                                          shape=(s.n_rows,))
            pos = 0
            bar = tqdm(total=s.n_rows, desc=f"pca {split}", unit="cells", disable=None if progress else True)
            for part in store.iter_row_groups(split, ("X", "cell_type")):
                n = len(part["X"])
                if pos + n > s.n_rows or len(part["cell_type"]) != n:
                    raise PCAError(f"split {split!r} yields more rows than its metadata's {s.n_rows}")
                z[pos:pos + n] = model.transform(part["X"])
                y[pos:pos + n] = part["cell_type"]
                pos += n
                bar.update(n)
            bar.close()
            if pos != s.n_rows:
                raise PCAError(f"split {split!r} yielded {pos} rows, its metadata says {s.n_rows}")
            z.flush()
            y.flush()
            del z, y  # close the maps before the folder is renamed
            report["rows"][split] = int(s.n_rows)
        write_json(tmp / REPORT_NAME, report)
    return {**report, "seconds": {"fit": round(fit_s, 3)}}


def load_embedding(pca_dir: str | Path, split: str, mmap: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(Z float32 (rows, k), cell type codes int64) of one split; memory-mapped read-only by default."""
    pca_dir = Path(pca_dir)
    if not pca_dir.is_dir():
        raise PCAError(f"PCA folder {pca_dir} does not exist (run the pca stage: pipelines/pca.py)")
    zp, yp = pca_dir / f"{split}.npy", pca_dir / f"{split}_cell_type.npy"
    for p in (zp, yp):
        if not p.exists():
            avail = sorted(q.stem for q in pca_dir.glob("*.npy") if not q.stem.endswith("_cell_type"))
            raise PCAError(f"PCA folder {pca_dir} has no {p.name} for split {split!r}; "
                           f"splits present: {', '.join(avail) or 'none'}")
    try:
        z = np.load(zp, mmap_mode="r" if mmap else None, allow_pickle=False)
        y = np.load(yp, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise PCAError(f"cannot read the {split!r} embedding in {pca_dir}: {e}") from e
    if z.ndim != 2 or y.ndim != 1:
        raise PCAError(f"{zp} has shape {z.shape} and {yp} {y.shape}; expected (rows, k) and (rows,)")
    if len(z) != len(y):
        raise PCAError(f"{zp.name} has {len(z)} rows but {yp.name} has {len(y)}: the folder is inconsistent "
                       "(re-run the pca stage)")
    if z.dtype != np.float32 or not np.issubdtype(y.dtype, np.integer):
        raise PCAError(f"{zp.name} has dtype {z.dtype} and {yp.name} {y.dtype}; expected float32 and int64")
    return z, y


def shard_range(n_rows: int, rank: int, world_size: int) -> tuple[int, int]:
    """Rows [start, stop) of worker ``rank`` of ``world_size``: contiguous, in file order, sizes differing by at
    most one (the first ``n_rows % world_size`` ranks take one more), together every row exactly once."""
    for name, v in (("n_rows", n_rows), ("rank", rank), ("world_size", world_size)):
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool):
            raise PCAError(f"shard_range: {name} must be an integer, got {v!r}")
    if world_size < 1:
        raise PCAError(f"shard_range: world_size must be at least 1, got {world_size}")
    if not 0 <= rank < world_size:
        raise PCAError(f"shard_range: rank {rank} is outside 0..{world_size - 1}")
    if n_rows < world_size:
        raise PCAError(f"cannot split {n_rows} row(s) over {world_size} workers (every worker needs at least one "
                       f"row); use fewer workers")
    base, extra = divmod(int(n_rows), int(world_size))
    start = rank * base + min(rank, extra)
    return int(start), int(start + base + (rank < extra))


def load_embedding_shard(pca_dir: str | Path, split: str, rank: int = 0,
                         world_size: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Worker ``rank``'s rows of one split (:func:`shard_range`) as in-memory copies: only that shard is read
    from the memory-mapped files, so a data-parallel worker never holds the whole split. An empty split comes
    back empty on every rank (all ranks agree whether there is a validation set)."""
    z, y = load_embedding(pca_dir, split, mmap=True)
    if len(y) == 0:
        return np.zeros((0, z.shape[1]), np.float32), np.zeros(0, np.int64)
    start, stop = shard_range(len(y), rank, world_size)
    return np.array(z[start:stop]), np.array(y[start:stop], dtype=np.int64)
