"""CellTypist on a random subsample of the train split (paper, Methods "CellTypist model").

The paper fitted ``celltypist.train`` as in CellTypist's best-practice tutorial, except that mean centring
was off (``with_mean=False``), on 1.5 million randomly chosen train cells, with feature_selection,
use_SGD, mini_batch, batch_number=1500 and epochs=10. The store already holds what CellTypist expects
(counts normalised to 10,000 per cell, then log1p), so rows go in unchanged.

Scoring uses the fitted model's own scaler and classifier on its own genes (``model.features``, a subset
of the store's genes after CellTypist's feature selection and its dropping of never-expressed genes).
CellTypist's per-class probabilities are one-vs-rest sigmoids; we normalise them per cell so they can be
scored like the other models' softmax outputs, keeping CellTypist's "best match" as the argmax.

The model file is CellTypist's own (a pickle): :func:`load_celltypist` refuses it unless ``trust_pickle=True``.

Memory (docs/celltypist-memory.md). The paper needed 350 GB for its 1.5 M cells; a dense float32 sample alone is
cells x genes x 4 bytes (108 GiB at 1.5 M x 19,331). So the sample is a scipy CSR matrix and
``celltypist.train`` runs on it sparse (with ``with_mean=False`` it keeps sparse input sparse). Where it copies:
the non-expressed-gene filter (``X[:, ~flag]``), the scaler (``fit_transform`` copies), then the feature-selection
column subset, while our sample is still held. Measured peak RSS of a process running it (celltypist 1.7.1,
scipy 1.15, sklearn 1.9; 50 classes, 10 % density, feature_selection, mini-batch SGD)::

    cells    genes   nnz      peak RSS   celltypist's share above the held sample
    10,000   19,331   19.3 M   1.31 GB    0.62 GB  (32.0 B/nnz)
    40,000   19,331   77.3 M   3.63 GB    2.47 GB  (32.0 B/nnz)
    80,000   19,331  154.6 M   6.75 GB    4.95 GB  (32.0 B/nnz)
    40,000   19,331   38.7 M   2.08 GB    1.24 GB  (32.1 B/nnz; 5 % non-zero)
   160,000    2,000   32.0 M   1.82 GB    1.02 GB  (32.0 B/nnz)
    dense input (before): 13 B per cell x gene inside celltypist + 4 held, ~460 GiB at 1.5 M x 19,331

    peak ~ BASE + BYTES_PER_NNZ * nnz + BYTES_PER_CELL * cells,   BASE 1 GiB (interpreter and imports: 0.54 GB
    measured), BYTES_PER_NNZ 40 (8 for our sample: float32 value + int32 index, 32 inside celltypist)

The number of genes enters only through nnz. One exception: from 2**31 non-zeros scipy's indices are int64, and
celltypist then densifies the scaled matrix (``toarray``); that regime is estimated from the code, not measured:
BASE + 24 * nnz + 8 * cells * genes (dense copy plus its feature-selected copy). ``models.celltypist.max_memory_gib``
caps the sample at the cells that fit (:func:`plan_sample`): ~430k cells in 32 GiB at 19,331 genes and 10 %.

Sparse input changes one thing in scikit-learn: SGD damps intercept updates 100x on sparse rows
(``SPARSE_INTERCEPT_DECAY``). :func:`fit_celltypist` undoes that during the fit, so a sparse sample trains the
model a dense one does (same scaler; the SGD steps equal on equal rows; what is left is float rounding in the
scaler, which mini-batch SGD amplifies as it amplifies any 1-ulp change of the input).
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import math
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from sctab.data.store import Store
from sctab.models.classifier import Classifier, FeatureSpace
from sctab.security import require_trusted_pickle

log = logging.getLogger(__name__)

# celltypist.train arguments we let through from params / search spaces (CellTypist names).
TRAIN_KEYS = {
    "feature_selection", "use_SGD", "mini_batch", "batch_number", "batch_size", "epochs", "with_mean",
    "top_genes", "alpha", "balance_cell_type", "n_jobs", "C", "solver", "max_iter",
}
OWN_KEYS = {"n_cells", "seed", "max_memory_gib"}  # subsample size; seed of the subsample, numpy's global RNG and
# sklearn; peak memory the fit may use (GiB, null: no cap), which caps the subsample
CELLTYPIST_TRAIN_KEYS = TRAIN_KEYS | OWN_KEYS
_FLAGS = ("feature_selection", "use_SGD", "mini_batch", "with_mean", "balance_cell_type")
_POSITIVE_INTS = ("n_cells", "batch_number", "batch_size", "epochs", "top_genes")
_SOLVERS = ("liblinear", "lbfgs", "newton-cg", "sag", "saga")  # celltypist's list for the LR path
MODEL_FILE = "model.pkl"

# Peak RSS of a process fitting celltypist on a sparse sample (module docstring): measured on synthetic data.
BASE_BYTES = 1 << 30
BYTES_PER_NNZ = 40
BYTES_PER_CELL = 64  # indptr, labels, celltypist's per-epoch permutation of the cells
INT32_NNZ = 2**31 - 1  # from here scipy's indices are int64 and celltypist densifies
DENSE_BYTES_PER_NNZ = 24  # sample and scaled matrix, int64 indices (estimated from the code, not measured)
DENSE_BYTES_PER_VALUE = 8  # the dense float32 copy and its feature-selected copy (at most all genes)
GIB = float(1 << 30)


class CellTypistConfigError(ValueError):
    """A CellTypist setting is unknown or out of range, or the data cannot be fitted with it."""


def _celltypist():
    """Import celltypist lazily (it pulls in scanpy and creates ~/.celltypist), without the FutureWarning
    celltypist 1.7.1 triggers by reading ``scanpy.__version__``."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*__version__.*", category=FutureWarning)
        import celltypist
        import celltypist.classifier  # noqa: F401  (the module that reads scanpy.__version__)
    return celltypist


# ---------------------------------------------------------------------------------------------- config
def _int(key: str, v, lo: int | None = None):
    """Integers, also as integral floats (search spaces sometimes hand those out)."""
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)) \
            or not math.isfinite(v) or int(v) != v:
        raise CellTypistConfigError(f"{key} must be an integer, got {v!r}")
    if lo is not None and v < lo:
        raise CellTypistConfigError(f"{key} must be >= {lo}, got {v!r}")
    return int(v)


def _lr_path_works() -> bool:
    """celltypist 1.7.1 passes multi_class='ovr' to LogisticRegression, which scikit-learn 1.8 removed."""
    from sklearn.linear_model import LogisticRegression

    return "multi_class" in inspect.signature(LogisticRegression.__init__).parameters


def check_config(config: dict) -> dict:
    """The config with every key known and every value plausible; raises naming the culprit.

    Integral values come back as ``int``; nothing is filled in (celltypist's defaults apply to what is
    left out, except ``n_cells`` and ``seed``, which the caller defaults).
    """
    unknown = sorted(set(config) - CELLTYPIST_TRAIN_KEYS)
    if unknown:
        raise CellTypistConfigError(f"unknown CellTypist setting(s) {unknown}; allowed: "
                                    f"{sorted(CELLTYPIST_TRAIN_KEYS, key=str.lower)}")
    c = dict(config)
    for key in _FLAGS:
        if key in c:
            if not isinstance(c[key], (bool, np.bool_)):
                raise CellTypistConfigError(f"{key} must be true or false, got {c[key]!r}")
            c[key] = bool(c[key])
    for key in _POSITIVE_INTS:
        if key in c:
            c[key] = _int(key, c[key], 1)
    if "seed" in c:
        c["seed"] = _int("seed", c["seed"], 0)
    if c.get("max_memory_gib") is not None:
        v = c["max_memory_gib"]
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.number)) or not math.isfinite(v) \
                or v <= 0:
            raise CellTypistConfigError(f"max_memory_gib must be a positive number of GiB or null (no cap), "
                                        f"got {v!r}")
        c["max_memory_gib"] = float(v)
    if c.get("max_iter") is not None:
        c["max_iter"] = _int("max_iter", c["max_iter"], 1)
    if c.get("n_jobs") is not None:
        c["n_jobs"] = _int("n_jobs", c["n_jobs"])
        if c["n_jobs"] == 0 or c["n_jobs"] < -1:
            raise CellTypistConfigError(f"n_jobs must be a positive integer or -1 (all CPUs), got {c['n_jobs']}")
    for key in ("alpha", "C"):
        if key in c:
            v = c[key]
            if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.number)) \
                    or not math.isfinite(v) or v <= 0:
                raise CellTypistConfigError(f"{key} must be a positive number, got {v!r}")
            c[key] = float(v)
    if c.get("solver") is not None and c["solver"] not in _SOLVERS:
        raise CellTypistConfigError(f"solver must be one of {', '.join(_SOLVERS)} or null, got {c['solver']!r}")
    if not c.get("use_SGD", False) and not _lr_path_works():
        import sklearn

        raise CellTypistConfigError(
            f"use_SGD must be true: celltypist's logistic-regression path passes multi_class='ovr', which "
            f"scikit-learn {sklearn.__version__} no longer accepts (the paper used SGD anyway)")
    return c


# ------------------------------------------------------------------------------------------- subsample
def sample_indices(n_rows: int, n_cells: int, seed: int) -> np.ndarray:
    """Sorted positions of a uniform sample without replacement of ``n_cells`` out of ``n_rows``."""
    if n_cells >= n_rows:
        return np.arange(n_rows, dtype=np.int64)
    rng = np.random.default_rng([int(seed), 17])
    return np.sort(rng.choice(n_rows, size=int(n_cells), replace=False)).astype(np.int64)


def sample_train(store: Store, n_cells: int, seed: int) -> tuple[sp.csr_matrix, np.ndarray]:
    """A random subsample of the train split as CSR float32 rows and int64 codes, in store order.

    Positions are drawn up front; the row groups are then streamed and the chosen rows of each turned into CSR
    at once, so memory is the sample's non-zeros (twice, while the blocks are stacked), not cells x genes.
    A ``csr_matrix``, not a ``csr_array``: celltypist recognises sparse input as ``scipy.sparse.spmatrix``.
    """
    n_cells = _int("n_cells", n_cells, 1)
    split = store.split("train")
    if n_cells >= split.n_rows:
        log.warning("CellTypist: n_cells=%d >= %d train cells; training on all of them", n_cells, split.n_rows)
    idx = sample_indices(split.n_rows, n_cells, seed)
    blocks, labels = [], []
    start = 0
    for path, i, rows in split.row_groups:
        lo, hi = np.searchsorted(idx, [start, start + rows])
        if hi > lo:
            g = store.read_row_group(path, i)
            local = idx[lo:hi] - start
            blocks.append(sp.csr_matrix(np.asarray(g["X"][local], dtype=np.float32)))
            labels.append(np.asarray(g["cell_type"][local], dtype=np.int64))
        start += rows
    X = sp.csr_matrix(sp.vstack(blocks, format="csr", dtype=np.float32))
    y = np.concatenate(labels)
    assert X.shape == (len(idx), store.n_genes) and len(y) == len(idx), (X.shape, len(y), len(idx))
    log.info("CellTypist: sampled %d of %d train cells (%d cell types, %.1f%% non-zero)", len(y), split.n_rows,
             len(np.unique(y)), 100.0 * X.nnz / max(X.shape[0] * X.shape[1], 1))
    return X, y


# ---------------------------------------------------------------------------------------------- memory
def estimate_peak_bytes(cells: int, nnz: float, n_genes: int) -> float:
    """Peak RSS of a process fitting celltypist on ``cells`` sampled rows holding ``nnz`` non-zeros (module
    docstring: measured for int32 indices; from 2**31 non-zeros celltypist densifies, estimated)."""
    if nnz < INT32_NNZ:
        return BASE_BYTES + BYTES_PER_NNZ * nnz + BYTES_PER_CELL * cells
    return BASE_BYTES + DENSE_BYTES_PER_NNZ * nnz + DENSE_BYTES_PER_VALUE * cells * n_genes + BYTES_PER_CELL * cells


def cells_that_fit(max_memory_gib: float, density: float, n_genes: int) -> int:
    """The most cells whose estimated fit stays within ``max_memory_gib`` at ``density`` (non-zero fraction)."""
    budget = float(max_memory_gib) * GIB - BASE_BYTES
    nnz_per_cell = max(float(density), 0.0) * n_genes
    if budget <= 0:
        return 0
    sparse_n = int(budget // (BYTES_PER_NNZ * nnz_per_cell + BYTES_PER_CELL))
    if sparse_n * nnz_per_cell < INT32_NNZ:
        return sparse_n
    below = max(int(math.ceil(INT32_NNZ / nnz_per_cell)) - 1, 0)  # the most cells that stay sparse
    dense_n = int(budget // (DENSE_BYTES_PER_NNZ * nnz_per_cell + DENSE_BYTES_PER_VALUE * n_genes + BYTES_PER_CELL))
    return dense_n if dense_n * nnz_per_cell >= INT32_NNZ else below


def train_density(store: Store, max_groups: int = 8) -> float:
    """Fraction of non-zero values in the train split: from up to ``max_groups`` evenly spread row groups."""
    groups = store.split("train").row_groups
    pick = np.unique(np.linspace(0, len(groups) - 1, min(max_groups, len(groups))).round().astype(int))
    nnz, values = 0, 0
    for j in pick:
        path, i, _ = groups[j]
        x = store.read_row_group(path, i, columns=("X",))["X"]
        nnz += int(np.count_nonzero(x))
        values += x.size
    return nnz / max(values, 1)


def min_cells(config: dict) -> int:
    """The fewest cells celltypist can fit: more than ``batch_size`` for mini-batch SGD, else two (two types)."""
    if config.get("use_SGD") and config.get("mini_batch"):
        return int(config.get("batch_size", 1000)) + 1
    return 2


def plan_sample(store: Store, config: dict) -> dict:
    """How many train cells the fit uses and what bounds it: ``n_cells``, the train rows, or the memory budget.

    Raises when the budget does not fit the smallest sample celltypist can train on.
    """
    c = check_config(config)
    requested = int(c.get("n_cells", 1_500_000))
    rows = store.split("train").n_rows
    budget = c.get("max_memory_gib")
    density = train_density(store)
    cap = None if budget is None else cells_that_fit(budget, density, store.n_genes)
    bounds = {"n_cells": requested, "train rows": rows, **({"memory budget": cap} if cap is not None else {})}
    bound_by = min(bounds, key=lambda k: (bounds[k], list(bounds).index(k)))
    used = bounds[bound_by]
    if bound_by == "memory budget" and used < min(min_cells(c), rows, requested):
        raise CellTypistConfigError(
            f"max_memory_gib={budget:g} fits only {used} cells (estimated for {store.n_genes} genes at "
            f"{100 * density:.1f}% non-zero), fewer than celltypist needs ({min_cells(c)}: more than batch_size "
            f"for mini-batch SGD, two cell types at least); raise max_memory_gib or lower batch_size")
    plan = {"sample_cells_requested": requested, "sample_train_rows": rows, "sample_cells_cap": cap,
            "sample_cells_used": int(used), "sample_bound_by": bound_by, "max_memory_gib": budget,
            "sample_density": float(density),
            "estimated_peak_gib": estimate_peak_bytes(used, used * density * store.n_genes, store.n_genes) / GIB}
    log.info("CellTypist: training on %d cells, bound by %s (n_cells %d, train rows %d, memory budget %s: %s); "
             "estimated peak %.2f GiB at %.1f%% non-zero", used, bound_by, requested, rows,
             "none" if budget is None else f"{budget:g} GiB", "no cap" if cap is None else f"{cap} cells",
             plan["estimated_peak_gib"], 100 * density)
    return plan


# ------------------------------------------------------------------------------------------------- fit
class _FirstAndLastEpoch(logging.Filter):
    """CellTypist logs every epoch of both passes; keep the first and last of each pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        if "Epochs: [" not in msg:
            return True
        done, total = msg.split("[", 1)[1].rstrip("]").split("/")
        return done in ("1", total)


@contextlib.contextmanager
def _seeded_quiet(seed: int):
    """Seed numpy's global RNG (CellTypist draws its mini-batches from it) and restore it afterwards."""
    state = np.random.get_state()
    ct_log = logging.getLogger("celltypist.logger")  # the logger celltypist's records are made on
    filt = _FirstAndLastEpoch()
    ct_log.addFilter(filt)
    np.random.seed(int(seed) % 2**32)
    try:
        yield
    finally:
        np.random.set_state(state)
        ct_log.removeFilter(filt)


@contextlib.contextmanager
def _dense_intercept_steps(sparse: bool):
    """scikit-learn's SGD scales intercept steps by 0.01 on sparse rows (``SPARSE_INTERCEPT_DECAY``); set to 1
    for the fit, so a sparse sample takes the steps a dense one does (and the model is the dense path's)."""
    if not sparse:
        yield
        return
    from sklearn.linear_model import _base

    if not isinstance(getattr(_base, "SPARSE_INTERCEPT_DECAY", None), float):
        import sklearn

        raise CellTypistConfigError(f"scikit-learn {sklearn.__version__} has no sklearn.linear_model._base."
                                    f"SPARSE_INTERCEPT_DECAY: cannot make sparse SGD match dense; pass dense rows")
    old = _base.SPARSE_INTERCEPT_DECAY
    _base.SPARSE_INTERCEPT_DECAY = 1.0
    try:
        yield
    finally:
        _base.SPARSE_INTERCEPT_DECAY = old


def fit_celltypist(X, y: np.ndarray, store: Store, config: dict):
    """``celltypist.train`` on normalised rows ``X`` (CSR or dense; cells x store genes) with codes ``y``.

    Labels are the store's cell-type strings and genes its feature ids, so the model speaks the store's
    language. ``seed`` seeds the mini-batch sampling (numpy's global RNG, restored afterwards) and is passed
    as ``random_state`` to the sklearn classifier (celltypist forwards extra keywords to it). Sparse rows stay
    sparse (``with_mean=True`` makes celltypist densify them).
    """
    celltypist = _celltypist()
    c = check_config(config)
    y = np.asarray(y, dtype=np.int64).ravel()
    if sp.issparse(X):
        X = sp.csr_matrix(X, dtype=np.float32)  # an spmatrix: celltypist does not recognise sparse arrays
    if X.ndim != 2 or X.shape[1] != store.n_genes:
        raise CellTypistConfigError(f"X has shape {X.shape}; expected (cells, {store.n_genes}) like the store")
    if X.shape[0] != len(y):
        raise CellTypistConfigError(f"X has {X.shape[0]} rows but y {len(y)} labels")
    if len(y) == 0 or len(np.unique(y)) < 2:
        raise CellTypistConfigError(f"need cells of at least two cell types to fit, got {len(np.unique(y))}")
    if y.min() < 0 or y.max() >= store.n_classes:
        raise CellTypistConfigError(f"y holds codes outside [0, {store.n_classes})")
    if c.get("use_SGD") and c.get("mini_batch") and len(y) <= c.get("batch_size", 1000):
        raise CellTypistConfigError(f"mini-batch training needs more cells ({len(y)}) than batch_size "
                                    f"({c.get('batch_size', 1000)})")
    if c.get("feature_selection"):
        expressed = int((np.asarray(X.sum(axis=0)).ravel() > 0).sum())
        if expressed <= c.get("top_genes", 300):
            raise CellTypistConfigError(f"feature selection needs more expressed genes ({expressed}) than "
                                        f"top_genes ({c.get('top_genes', 300)})")
    seed = int(c.get("seed", 0))
    kwargs = {k: v for k, v in c.items() if k in TRAIN_KEYS}
    labels = np.asarray(store.classes, dtype=object)[y]
    genes = store.var["feature_id"].astype(str).to_numpy()
    with _seeded_quiet(seed), _dense_intercept_steps(sp.issparse(X)):
        model = celltypist.train(X, labels=labels, genes=genes, check_expression=True, random_state=seed,
                                 **kwargs)
    if model is None:  # celltypist returns None instead of raising in one GPU case
        raise CellTypistConfigError("celltypist.train returned no model")
    return model


# --------------------------------------------------------------------------------------------- predict
def _feature_columns(model, store: Store) -> np.ndarray:
    """Store column of each model feature (the model may use a subset of the genes, in its own order)."""
    pos = {g: i for i, g in enumerate(store.var["feature_id"].astype(str))}
    missing = [g for g in model.features if str(g) not in pos]
    if missing:
        raise CellTypistConfigError(f"{len(missing)} of the model's {len(model.features)} genes are not in the "
                                    f"store (e.g. {missing[:3]}); was it trained on another gene list?")
    return np.array([pos[str(g)] for g in model.features], dtype=np.int64)


def _class_codes(model, store: Store) -> np.ndarray:
    code = {lab: i for i, lab in enumerate(store.classes)}
    missing = [str(t) for t in model.cell_types if str(t) not in code]
    if missing:
        raise CellTypistConfigError(f"the model's cell types {missing[:5]} are not classes of the store")
    return np.array([code[str(t)] for t in model.cell_types], dtype=np.int64)


def _scores(model, X: np.ndarray, store: Store) -> tuple[np.ndarray, np.ndarray]:
    """CellTypist's decision scores and best-match labels, scaled and clipped as ``celltypist.annotate`` does."""
    X = np.asarray(X)
    if X.ndim != 2 or X.shape[1] != store.n_genes:
        raise CellTypistConfigError(f"X has shape {X.shape}; expected (cells, {store.n_genes}) like the store")
    x = X[:, _feature_columns(model, store)].astype(np.float64)
    if model.scaler.with_mean:
        x -= model.scaler.mean_
    x /= model.scaler.scale_
    x[x > 10] = 10
    scores, _, best = model.predict_labels_and_prob(x, mode="best match")
    return np.asarray(scores, dtype=np.float64), best


def predict_proba(model, X: np.ndarray, store: Store) -> np.ndarray:
    """(cells, store.n_classes) float32: CellTypist's sigmoids normalised per cell, 0 for unseen classes.

    Normalised in log space (sigmoids saturate at 1.0 for large scores), and where float32 rounding ties
    the best-match class with another, it is nudged up one ulp so the argmax is CellTypist's choice.
    """
    scores, _ = _scores(model, X, store)
    logsig = -np.logaddexp(0.0, -scores)
    logp = logsig - np.logaddexp.reduce(logsig, axis=1, keepdims=True)
    p = np.exp(logp).astype(np.float32)
    codes = _class_codes(model, store)
    out = np.zeros((len(p), store.n_classes), dtype=np.float32)
    out[:, codes] = p
    best = codes[scores.argmax(axis=1)]
    rows = np.arange(len(out))
    tied = out.argmax(axis=1) != best
    if tied.any():
        out[rows[tied], best[tied]] = np.nextafter(out[rows[tied]].max(axis=1), np.float32(np.inf))
    return out


def predict_labels(model, X: np.ndarray, store: Store) -> np.ndarray:
    """Store codes of CellTypist's best match (the argmax of ``predict_proba``)."""
    _, best = _scores(model, X, store)
    code = {lab: i for i, lab in enumerate(store.classes)}
    return np.array([code[str(t)] for t in best], dtype=np.int64)


# ------------------------------------------------------------------------------------------------- i/o
def save_celltypist(model, folder: str | Path) -> Path:
    """``folder/model.pkl`` in CellTypist's own format (``celltypist.models.Model.load`` /
    ``celltypist.annotate(..., model=path)`` read it)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / MODEL_FILE
    model.write(str(path))
    return path


def load_celltypist(path: str | Path, *, trust_pickle: bool = False):
    """A model written by :func:`save_celltypist` (a file, or the folder holding ``model.pkl``).

    CellTypist's format is a pickle, which runs code when read: refused (``UntrustedPickleError``) unless
    ``trust_pickle=True`` says the file comes from you or a source you trust.
    """
    path = Path(path)
    if path.is_dir():
        path = path / MODEL_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no CellTypist model at {path} (expected the {MODEL_FILE} that save_celltypist "
                                f"writes)")
    require_trusted_pickle(path, "a CellTypist model", trust_pickle)
    Model = _celltypist().models.Model
    return Model.load(str(path.resolve()))


class CellTypistClassifier(Classifier):
    """CellTypist's logistic regression on its own genes; per-cell normalised one-vs-rest sigmoids."""

    kind = "celltypist"
    model_file = MODEL_FILE
    pickled = True
    input_description = "normalised genes (model.features)"

    def __init__(self, model, space: FeatureSpace, config: dict | None = None):
        self.model, self.space, self.config = model, space, dict(config or {})
        _feature_columns(model, space)  # every model gene is a gene of the space
        _class_codes(model, space)

    def predict_proba(self, x_log1p) -> np.ndarray:
        self._check_input(x_log1p)
        return predict_proba(self.model, x_log1p, self.space)

    def save_model_file(self, folder: Path) -> None:
        save_celltypist(self.model, folder)

    @classmethod
    def load_model_file(cls, folder: Path, space: FeatureSpace, meta: dict, *, device: str = "cpu",
                        trust_pickle: bool = False) -> CellTypistClassifier:
        return cls(load_celltypist(folder, trust_pickle=trust_pickle), space, meta.get("config"))
