"""The XGBoost baseline's input: an exact PCA fitted on the train split only (paper, Methods "XGBoost model").

The paper fits an incremental PCA; this fit is exact. The store is bigger than memory, so the train split is
streamed once, in a fixed order, into `batch_size`-row chunks that accumulate the gene-gene Gram matrix of the
rows minus a shift (the first chunk's means) and their column sums (`GramAccumulator`); the centred covariance
(divided by n - 1, as sklearn's PCA) then gets one symmetric eigendecomposition of its top n_components (LAPACK
syevr through scipy.linalg.eigh; `top_components`). explained_variance_ratio = eigenvalue / the covariance's
trace. Each component's largest-|value| entry is positive. The projection of every split is written row group
by row group into memory-mapped `.npy` files.

Why exact: IncrementalPCA truncates to n_components after every batch; on tiny it explained 0.5858 of the
train variance where the exact PCA explains 0.5951 (256 components). Why the covariance: it is also faster at
the paper's 19,331 genes, where IncrementalPCA needs an SVD of (256 + 4096) x 19,331 per batch.
Measured on a busy 2-core machine (benchmarks/pca_method.py, one 4,096 x 19,331 chunk of scRNA-like rows):
a covariance chunk takes 10.6 s on 1 BLAS thread (385 cells/s) and 5.5 s on 2 (742 cells/s); one
IncrementalPCA.partial_fit of the same rows took 93.8 s on 1 thread (44 cells/s): 8.8x slower. The top-256
eigendecomposition of a 19,331 x 19,331 covariance took 898 s on one thread (driver evr; evx was 80 s against
evr's 72 s at 8,000 genes and equal at 5,000). For the paper's 15.2 M train cells: 5.7 h on 2 cores, or 0.7 h
on a 16-core node if the BLAS scaled linearly with cores (an assumption, not measured), plus the one eigh.

Each chunk's product is a float32 SYRK added to a float64 sum. Measured against the float64 product (2,000 genes,
40,960 scRNA-like rows, 4,096-row chunks, 256 components): eigenvalues within 2e-8 (relative) for the top 20
and 3e-7 for all 256, the explained variance ratio total within 1e-8, every |cos| between components 1.0000000;
the float64 product is 2x slower (20.7 s against 10.6 s per 4,096 x 19,331 chunk on one core). The shift
matters: without it the same float32 products were off by 8e-6 in the top eigenvalues, and a gene whose mean
is large against its spread would lose its variance (tests/sctab_data/test_pca.py: mean 1e3, sd 1e-2).

Memory is flat in cells: the float64 Gram matrix (n_genes^2 x 8 B), the float32 chunk product (n_genes^2 x
4 B), one chunk (batch_size x n_genes x 4 B) and one row group; at 19,331 genes and 4,096 rows 2.8 + 1.4 +
0.3 GiB = 4.5 GiB (the bench's peak RSS, with its own copies of the chunk: 5.0 GiB). The covariance is
formed in place and eigh overwrites it, so the eigendecomposition adds only its n_genes x n_components
eigenvectors (measured at 19,331 genes: peak RSS 2.94 GiB before and after eigh).

The outputs are byte-identical run to run for the same store and parameters, on any number of cores: the
fit and the projection run with the BLAS pinned to ``pca.blas_threads`` threads (default 1), because
OpenBLAS's float32 matrix products round differently with 1 and with 2+ threads (measured with the former
IncrementalPCA: last-bit differences, 5e-5 in the components). XGBoost's histogram binning turns such
differences into other trees: on tiny, test macro F1 0.7542 on a 2-thread fit and 0.7472 on a 1-thread fit,
the booster itself bit-identical run to run. The result also depends on batch_size (the chunks' rounding).
Timings are returned and printed, not written. Different CPU families may still pick different OpenBLAS
kernels (``OPENBLAS_CORETYPE`` pins one).

Output folder (written atomically: complete or absent):
    pca.npz                       the projection (PCAModel; plain arrays, readable without pickle)
    <split>.npy                   float32 (rows, n_components), rows in the store's file order
    <split>_cell_type.npy         int64 cell type codes, same order
    report.json                   method, components, genes, rows per split, explained variance, BLAS threads
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
METHOD = "covariance-eigh"  # report.json's "method"


def _check_sizes(n_components: int, batch_size: int, n_genes: int, n_train: int) -> None:
    if n_components < 1:
        raise PCAError(f"n_components must be at least 1 (got {n_components})")
    if n_components > n_genes:
        raise PCAError(f"n_components={n_components} exceeds the store's {n_genes} genes")
    if batch_size < 1:
        raise PCAError(f"batch_size must be at least 1 row (got {batch_size})")
    if n_train < n_components:
        raise PCAError(f"the train split has {n_train} rows, fewer than n_components={n_components}")
    if n_train < 2:
        raise PCAError(f"the train split has {n_train} row(s); a covariance needs at least 2")


class GramAccumulator:
    """Streamed sums for an exact covariance: the shifted Gram matrix (x - s)^T (x - s) and column sums.

    Chunks are added in a fixed order. Each chunk's product is one float32 SYRK (lower triangle), added to a
    float64 running sum. The shift ``s`` (the first chunk's column means) keeps the products on the scale of
    the covariance, so a gene with a large mean and a small variance does not cancel away in float32."""

    def __init__(self, n_genes: int):
        self.n_genes = int(n_genes)
        self.n_rows = 0
        self.shift: np.ndarray | None = None                     # float32 (n_genes,)
        self._sum = np.zeros(self.n_genes, dtype=np.float64)       # of the shifted rows
        self._gram = np.zeros((self.n_genes, self.n_genes), dtype=np.float64, order="F")  # lower triangle
        self._chunk: np.ndarray | None = None                     # float32 SYRK output, reused

    def add(self, chunk: np.ndarray) -> None:
        """Add (rows, n_genes) float32 rows; `chunk` is scratch space (shifted in place)."""
        from scipy.linalg import blas

        if chunk.ndim != 2 or chunk.shape[1] != self.n_genes or chunk.dtype != np.float32:
            raise PCAError(f"a chunk of shape {chunk.shape} and dtype {chunk.dtype}; expected (rows, "
                           f"{self.n_genes}) float32")
        if not chunk.flags.c_contiguous:
            raise PCAError("a chunk must be C-contiguous (its transpose is the SYRK's Fortran-order input)")
        if not len(chunk):
            return
        if self.shift is None:
            self.shift = chunk.mean(axis=0, dtype=np.float64).astype(np.float32)
            self._chunk = np.zeros((self.n_genes, self.n_genes), dtype=np.float32, order="F")
        chunk -= self.shift
        self._sum += chunk.sum(axis=0, dtype=np.float64)
        # chunk.T is (n_genes, rows) in Fortran order: C = chunk.T @ chunk with no copy; beta=0 overwrites
        self._chunk = blas.ssyrk(1.0, chunk.T, beta=0.0, c=self._chunk, lower=1, overwrite_c=1)
        self._gram += self._chunk  # its upper triangle is never written: zeros
        self.n_rows += len(chunk)

    def covariance(self) -> tuple[np.ndarray, np.ndarray]:
        """(covariance float64 (n_genes, n_genes) Fortran order, lower triangle only; mean float64 (n_genes,)).

        Divided by n - 1 as sklearn's PCA does. Consumes the accumulator: the Gram matrix becomes the covariance
        in place (no second n_genes^2 array)."""
        from scipy.linalg import blas

        n = self.n_rows
        if n < 2 or self.shift is None:
            raise PCAError(f"a covariance needs at least 2 rows, {n} were added")
        self._chunk = None  # free the float32 product before the caller's eigendecomposition
        m = self._sum / n
        cov = blas.dsyr(-float(n), m, lower=1, a=self._gram, overwrite_a=1)  # G - n m m^T, lower triangle
        cov /= n - 1
        self._gram = None
        return cov, self.shift.astype(np.float64) + m


def top_components(cov: np.ndarray, n_components: int) -> tuple[np.ndarray, np.ndarray, float]:
    """(components (k, n_genes), eigenvalues (k,), total variance) of a covariance whose lower triangle is set.

    One symmetric eigendecomposition of the top k only (LAPACK syevr, overwriting `cov`). The sign of each
    component puts its largest-|value| entry positive (first one on a tie), so the result is deterministic."""
    from scipy.linalg import eigh

    g = cov.shape[0]
    diag = cov.diagonal().copy()
    if not np.isfinite(diag).all():
        raise PCAError("the train split's expression has non-finite values (NaN or inf): no covariance")
    total = float(diag.sum())
    if total <= 0:
        raise PCAError("the train split has no variance: every gene is constant")
    w, v = eigh(cov, lower=True, subset_by_index=[g - n_components, g - 1], driver="evr", overwrite_a=True,
                check_finite=False)
    w, comps = np.maximum(w[::-1], 0.0), np.ascontiguousarray(v[:, ::-1].T)
    rows = np.arange(n_components)
    comps *= np.sign(comps[rows, np.abs(comps).argmax(axis=1)])[:, None]
    return comps, w, total


def fit_pca(store: Store, n_components: int, batch_size: int, progress: bool = True,
            blas_threads: int = BLAS_THREADS) -> "PCAModel":
    """The exact PCA of the train split: covariance streamed in `batch_size`-row chunks, then its top components.

    The BLAS runs on ``blas_threads`` threads, so the result does not depend on the machine's cores."""
    with pinned_blas(blas_threads):
        return _fit_pca(store, n_components, batch_size, progress)


def _fit_pca(store: Store, n_components: int, batch_size: int, progress: bool) -> "PCAModel":
    n_components, batch_size = int(n_components), int(batch_size)
    train = store.split("train")
    n_genes = store.n_genes
    _check_sizes(n_components, batch_size, n_genes, train.n_rows)

    acc = GramAccumulator(n_genes)
    buf = np.empty((min(batch_size, train.n_rows), n_genes), dtype=np.float32)
    fill = 0
    seen = 0
    bar = tqdm(total=train.n_rows, desc="pca fit", unit="cells", disable=None if progress else True)
    for (path, index, n_rows), part in zip(train.row_groups, store.iter_row_groups("train", ("X",))):
        x = part["X"]
        if len(x) != n_rows:
            raise PCAError(f"row group {index} of {path} has {len(x)} rows, its metadata says {n_rows}")
        if seen + n_rows > train.n_rows:
            raise PCAError(f"the train split yields more rows than its metadata's {train.n_rows}")
        seen += n_rows
        start = 0
        while start < n_rows:
            take = min(len(buf) - fill, n_rows - start)
            buf[fill:fill + take] = x[start:start + take]
            fill += take
            start += take
            if fill == len(buf):
                acc.add(buf)
                fill = 0
        bar.update(n_rows)
    bar.close()
    if seen != train.n_rows:
        raise PCAError(f"read {seen} train rows, the store's metadata says {train.n_rows}")
    acc.add(buf[:fill])
    if acc.n_rows != train.n_rows:  # guards the chunking above
        raise PCAError(f"accumulated {acc.n_rows} rows, train has {train.n_rows}")
    del buf
    cov, mean = acc.covariance()
    components, variance, total = top_components(cov, n_components)
    return PCAModel(components=components, mean=mean, explained_variance=variance,
                    explained_variance_ratio=variance / total, n_samples_seen=acc.n_rows,
                    feature_id=store.var["feature_id"].astype(str).tolist())


# ----------------------------------------------------------------------------------------------- model
@dataclass
class PCAModel:
    """A fitted projection as plain arrays: `transform` equals sklearn's PCA.transform (no whitening)."""

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
        n = getattr(pca, "n_samples_seen_", None)  # IncrementalPCA; PCA calls it n_samples_
        return cls(components=pca.components_, mean=pca.mean_, explained_variance=pca.explained_variance_,
                   explained_variance_ratio=pca.explained_variance_ratio_,
                   n_samples_seen=int(pca.n_samples_ if n is None else n), feature_id=list(feature_ids))

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


def components_for(n_components: int, n_train: int, n_genes: int, shrink_to_train: bool) -> int:
    """The components to fit: ``n_components``, or with ``shrink_to_train`` at most what the train split can
    give (a covariance of n rows has rank n - 1 at most; never more than the genes). Why: a small reference's
    train split can hold fewer cells than the paper's 256 components (500 cells split 70/15/15 by cell leave
    about 350 before the type filters); the reference profiles shrink, the paper's profiles keep the error."""
    n = int(n_components)
    if shrink_to_train:
        n = max(1, min(n, int(n_train) - 1, int(n_genes)))
    return n


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
    model = fit_pca(store, n_components, batch_size, progress=progress, blas_threads=blas_threads)
    fit_s = time.perf_counter() - t0
    k = model.n_components
    report = {"method": METHOD, "n_components": k, "n_genes": store.n_genes, "batch_size": int(batch_size),
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
