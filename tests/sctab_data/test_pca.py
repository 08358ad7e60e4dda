"""The `pca` stage: exact PCA (streamed covariance, then eigh) of the train split (paper, Methods "XGBoost model")."""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from sklearn.decomposition import PCA

from sctab.data.pca import PCAError, PCAModel, components_for, fit_pca, load_embedding, write_pca
from sctab.data.store import Store
from tests.conftest import pipeline_help
from tests.paths import REPO_ROOT as REPO

SPLITS = ("train", "val", "test")


# small matrices: one BLAS thread avoids spin-waiting threads on a busy 2-core machine (10x slower there)
ONE_THREAD = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
# float32 rounding of the chunk products: measured 5.5e-7 at most on the fixture (the smallest of 32 eigenvalues)
EXACT = 2e-6


@pytest.fixture(scope="module", autouse=True)
def blas_one_thread():
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        yield


@pytest.fixture(scope="module")
def cfg(census_params) -> dict:
    return dict(census_params["pca"])


@pytest.fixture(scope="module")
def store(store_dir) -> Store:
    return Store(store_dir)


def _read(store: Store, split: str) -> tuple[np.ndarray, np.ndarray]:
    parts = list(store.iter_row_groups(split))
    return np.concatenate([p["X"] for p in parts]), np.concatenate([p["cell_type"] for p in parts])


@pytest.fixture(scope="module")
def train_x(store) -> np.ndarray:
    return _read(store, "train")[0]


@pytest.fixture(scope="module")
def fitted(store, cfg) -> PCAModel:
    return fit_pca(store, cfg["n_components"], cfg["batch_size"], progress=False)


@pytest.fixture(scope="module")
def oracle(train_x, cfg) -> PCA:
    """The exact PCA: sklearn's full SVD of the whole train matrix in memory, in float64."""
    return PCA(n_components=cfg["n_components"], svd_solver="full").fit(train_x.astype(np.float64))


@pytest.fixture(scope="module")
def written(store, cfg, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("pca") / "pca"
    return out, write_pca(store, out, cfg["n_components"], cfg["batch_size"], progress=False)


def _separated(variance: np.ndarray, gap: float = 2e-3) -> np.ndarray:
    """Components whose eigenvalue is at least `gap` (relative) away from both neighbours: only their
    directions are defined well enough to compare."""
    rel = np.abs(np.diff(variance)) / variance[0]
    left = np.r_[np.inf, rel]
    right = np.r_[rel, rel[-1] if len(rel) else np.inf]  # the last one's lower neighbour is not fitted
    return np.flatnonzero((left > gap) & (right > gap))


# ------------------------------------------------------------------------------------------------- fit
def test_fit_equals_exact_pca(fitted, oracle, train_x, cfg, store):
    """Covariance + eigh is exact: sklearn's full SVD of the same rows, to float32 rounding."""
    k = cfg["n_components"]
    assert train_x.shape[0] > 2 * cfg["batch_size"], "the fixture must need several chunks"
    assert fitted.components.shape == (k, store.n_genes) and fitted.n_samples_seen == len(train_x)
    np.testing.assert_allclose(fitted.explained_variance, oracle.explained_variance_, rtol=EXACT)
    np.testing.assert_allclose(fitted.explained_variance_ratio, oracle.explained_variance_ratio_, rtol=EXACT)
    assert fitted.explained_variance_ratio.sum() == pytest.approx(oracle.explained_variance_ratio_.sum(), rel=1e-7)
    np.testing.assert_allclose(fitted.mean, train_x.astype(np.float64).mean(axis=0), rtol=1e-6, atol=1e-7)
    sep = _separated(oracle.explained_variance_)
    assert len(sep) >= 5, "the fixture's spectrum must have well-separated components to compare"
    cos = np.abs((fitted.components[sep].astype(np.float64) * oracle.components_[sep]).sum(axis=1))
    assert cos.min() > 0.9999
    # the embedding, up to each component's sign
    sign = np.sign((fitted.components.astype(np.float64) * oracle.components_).sum(axis=1))
    z, ref = fitted.transform(train_x[:500]), oracle.transform(train_x[:500].astype(np.float64)) * sign
    np.testing.assert_allclose(z[:, sep], ref[:, sep], atol=1e-4 * np.abs(ref).max())


def test_components_have_a_fixed_sign(fitted):
    """Each component's largest-|value| entry is positive, and components are orthonormal."""
    c = fitted.components.astype(np.float64)
    assert (c[np.arange(len(c)), np.abs(c).argmax(axis=1)] > 0).all()
    np.testing.assert_allclose(c @ c.T, np.eye(len(c)), atol=1e-6)
    assert (np.diff(fitted.explained_variance) <= 0).all()


def test_fit_is_deterministic(store, cfg, fitted):
    again = fit_pca(store, cfg["n_components"], cfg["batch_size"], progress=False)
    for name in ("components", "mean", "explained_variance", "explained_variance_ratio"):
        assert getattr(again, name).tobytes() == getattr(fitted, name).tobytes(), name


@pytest.mark.parametrize("case", ["one row", "row group", "straddling", "single chunk"])
def test_chunking_changes_only_rounding(store, oracle, cfg, case):
    """Every train row is accumulated whatever the chunk length: one row, the store's row group (64 rows),
    chunks straddling row groups with a remainder, or all of train at once."""
    n = store.split("train").n_rows
    b = {"one row": 1, "row group": 64, "straddling": 100, "single chunk": n + 100}[case]
    if case == "straddling":
        assert n % b and b % 64
    pca = fit_pca(store, cfg["n_components"], b, progress=False)
    assert pca.n_samples_seen == n
    np.testing.assert_allclose(pca.explained_variance, oracle.explained_variance_, rtol=EXACT)


def test_accumulator_survives_a_large_mean():
    """A gene with mean 1e3 and standard deviation 1e-2: the float32 products of unshifted rows would lose
    its variance (x^2 = 1e6 rounds in steps of 0.06); the shift keeps it exact."""
    from sctab.data.pca import GramAccumulator

    rng = np.random.default_rng(0)
    x = rng.normal(0, 1, size=(3000, 6))
    x[:, 0] = 1e3 + 1e-2 * x[:, 0]
    x[:, 1] += 0.5 * x[:, 2]
    x = x.astype(np.float32)
    acc = GramAccumulator(6)
    for i in range(0, len(x), 700):
        acc.add(x[i:i + 700].copy())
    cov, mean = acc.covariance()
    ref = np.cov(x.astype(np.float64), rowvar=False)
    np.testing.assert_allclose(np.tril(cov), np.tril(ref), rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(mean, x.astype(np.float64).mean(axis=0), rtol=1e-7, atol=1e-6)  # sd 1 or 1e-2


def test_accumulator_refuses_bad_input():
    from sctab.data.pca import GramAccumulator, top_components

    acc = GramAccumulator(4)
    with pytest.raises(PCAError, match=r"expected \(rows, 4\) float32"):
        acc.add(np.zeros((3, 4), dtype=np.float64))
    with pytest.raises(PCAError, match="C-contiguous"):
        acc.add(np.zeros((4, 8), dtype=np.float32)[:, ::2])
    acc.add(np.ones((1, 4), dtype=np.float32))
    with pytest.raises(PCAError, match="at least 2 rows, 1 were added"):
        acc.covariance()
    x = np.ones((5, 4), dtype=np.float32)
    x[2, 1] = np.nan
    acc = GramAccumulator(4)
    acc.add(x)
    with pytest.raises(PCAError, match="non-finite"):
        top_components(acc.covariance()[0], 2)
    acc = GramAccumulator(4)
    acc.add(np.full((5, 4), 3.0, dtype=np.float32))
    with pytest.raises(PCAError, match="no variance"):
        top_components(acc.covariance()[0], 2)


def test_model_transform_equals_sklearn(oracle, train_x, store):
    model = PCAModel.from_sklearn(oracle, store.var["feature_id"])
    assert model.n_samples_seen == len(train_x)
    z = model.transform(train_x[:500])
    ref = oracle.transform(train_x[:500].astype(np.float64))
    assert z.dtype == np.float32 and z.shape == ref.shape
    np.testing.assert_allclose(z, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
    np.testing.assert_allclose(model.transform(train_x[:5].astype(np.float64)), ref[:5], rtol=1e-4,
                               atol=1e-4 * np.abs(ref).max())
    with pytest.raises(PCAError, match=r"expects \(cells, 300 genes\)"):
        model.transform(train_x[:5, :10])


def _mini_store(store_dir: Path, out: Path, n_train: int) -> Store:
    """A copy of the fixture store whose train split keeps only its first `n_train` rows."""
    shutil.copytree(store_dir, out)
    for f in (out / "train").glob("part.*.parquet"):
        f.unlink()
    tbl = pq.read_table(store_dir / "train" / "part.0.parquet").slice(0, n_train)
    pq.write_table(tbl, out / "train" / "part.0.parquet", row_group_size=16)
    return Store(out)


@pytest.mark.parametrize("k, b, match", [
    (0, 512, "at least 1"),
    (301, 512, "exceeds the store's 300 genes"),
    (32, 0, "batch_size must be at least 1 row"),
])
def test_bad_sizes_are_refused(store, k, b, match):
    assert store.n_genes == 300
    with pytest.raises(PCAError, match=match):
        fit_pca(store, k, b, progress=False)


def test_train_smaller_than_n_components(store_dir, tmp_path):
    small = _mini_store(store_dir, tmp_path / "small", 20)
    with pytest.raises(PCAError, match="train split has 20 rows, fewer than n_components=32"):
        fit_pca(small, 32, 512, progress=False)
    with pytest.raises(PCAError):
        write_pca(small, tmp_path / "out", 32, 512, progress=False)
    assert not (tmp_path / "out").exists()
    pca = fit_pca(small, 16, 512, progress=False)  # one chunk shorter than batch_size
    assert pca.n_samples_seen == 20 and pca.n_components == 16


def test_shrink_to_train_caps_components_at_rows_minus_one():
    assert components_for(256, 222, 14_000, shrink_to_train=True) == 221
    assert components_for(256, 5_000, 14_000, shrink_to_train=True) == 256
    assert components_for(256, 5_000, 100, shrink_to_train=True) == 100
    assert components_for(256, 222, 14_000, shrink_to_train=False) == 256  # the paper's profiles: fit_pca refuses


def test_pipeline_shrinks_to_a_small_train_split(census_params, store_dir, tmp_path):
    small = _mini_store(store_dir, tmp_path / "small", 20)
    params = {k: v for k, v in copy.deepcopy(census_params).items() if not k.startswith("_")}
    params["pca"] = {"n_components": 32, "batch_size": 300, "shrink_to_train": True}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    r = subprocess.run([sys.executable, str(REPO / "pipelines" / "pca.py"), "--params", "params.yaml",
                        "--store", str(small.root), "--out", "out/pca"],
                       cwd=tmp_path, env={**os.environ, **ONE_THREAD}, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "19 components instead of pca.n_components=32" in " ".join(r.stdout.split())
    assert json.loads((tmp_path / "out" / "pca" / "report.json").read_text())["n_components"] == 19


# ----------------------------------------------------------------------------------------------- model
def test_npz_round_trip_without_pickle(fitted, store, train_x, tmp_path):
    model = fitted
    path = model.save(tmp_path / "pca.npz")
    with np.load(path, allow_pickle=False) as z:
        assert z["components"].dtype == np.float32 and z["mean"].dtype == np.float32
        assert z["feature_id"].tolist() == store.var["feature_id"].astype(str).tolist()
    back = PCAModel.load(path)
    assert PCAModel.load(tmp_path).n_components == model.n_components  # the folder works too
    assert back.n_samples_seen == len(train_x) and back.feature_id == model.feature_id
    np.testing.assert_array_equal(back.components, model.components)
    np.testing.assert_array_equal(back.explained_variance_ratio, fitted.explained_variance_ratio)
    np.testing.assert_array_equal(back.transform(train_x[:100]), model.transform(train_x[:100]))


def test_load_errors(oracle, tmp_path):
    with pytest.raises(PCAError, match="does not exist"):
        PCAModel.load(tmp_path / "missing.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip file")
    with pytest.raises(PCAError, match="cannot read"):
        PCAModel.load(tmp_path / "junk.npz")
    np.savez(tmp_path / "partial.npz", components=np.zeros((2, 3), np.float32))
    with pytest.raises(PCAError, match="lacks .*mean"):
        PCAModel.load(tmp_path / "partial.npz")
    with pytest.raises(PCAError, match="feature ids"):
        PCAModel.from_sklearn(oracle, ["a", "b"])
    with pytest.raises(PCAError, match="not fitted"):
        PCAModel.from_sklearn(PCA(4), ["a"])


# ------------------------------------------------------------------------------------------------ files
def test_written_folder(written, fitted, store, cfg):
    out, report = written
    k = cfg["n_components"]
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["pca.npz", "report.json"] + [f"{s}.npy" for s in SPLITS] + [f"{s}_cell_type.npy" for s in SPLITS])
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk == {k: v for k, v in report.items() if k != "seconds"}  # timings are not written
    assert report["seconds"]["total"] >= report["seconds"]["fit"] > 0 and on_disk["blas_threads"] == 1
    assert report["n_components"] == k and report["n_genes"] == store.n_genes and report["batch_size"] == 512
    assert report["method"] == "covariance-eigh" and report["n_samples_seen"] == report["rows"]["train"]
    assert report["explained_variance_ratio"] == pytest.approx(fitted.explained_variance_ratio.sum(), rel=1e-12)
    assert report["explained_variance_ratio_per_component"] == fitted.explained_variance_ratio.tolist()
    model = PCAModel.load(out / "pca.npz")
    for split in SPLITS:
        x, ct = _read(store, split)
        assert report["rows"][split] == len(x) == store.split(split).n_rows
        z, y = load_embedding(out, split)
        assert isinstance(z, np.memmap) and z.dtype == np.float32 and z.shape == (len(x), k)
        assert y.dtype == np.int64
        np.testing.assert_array_equal(y, ct)  # same rows, same order as the store
        zs = np.concatenate([model.transform(p["X"]) for p in store.iter_row_groups(split, ("X",))])
        np.testing.assert_array_equal(z, zs)  # transformed row group by row group, in order
    z, y = load_embedding(out, "val", mmap=False)
    assert not isinstance(z, np.memmap) and len(z) == len(y)


def test_load_embedding_errors(written, tmp_path):
    out, _ = written
    with pytest.raises(PCAError, match="does not exist"):
        load_embedding(tmp_path / "nope", "train")
    with pytest.raises(PCAError, match="no holdout.npy .*splits present: test, train, val"):
        load_embedding(out, "holdout")
    bad = tmp_path / "bad"
    shutil.copytree(out, bad)
    np.save(bad / "val_cell_type.npy", np.load(bad / "val_cell_type.npy")[:-3])
    with pytest.raises(PCAError, match="inconsistent"):
        load_embedding(bad, "val")


_WRITE = """
import sys
from sctab.data.pca import write_pca
from sctab.data.store import Store
write_pca(Store(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), progress=False)
"""


def _write_in_process(store_dir, out: Path, cfg: dict, threads: int) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "OPENBLAS_NUM_THREADS": str(threads),
           "MKL_NUM_THREADS": str(threads)}
    r = subprocess.run([sys.executable, "-c", _WRITE, str(store_dir), str(out), str(cfg["n_components"]),
                        str(cfg["batch_size"])], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]


def test_outputs_are_byte_identical_across_runs_and_thread_counts(store_dir, cfg, tmp_path):
    """Two fresh processes, one with single-threaded and one with 2-thread BLAS defaults: the same bytes
    (unpinned, OpenBLAS rounds the float32 products and SVD differently with 1 and 2 threads)."""
    _write_in_process(store_dir, tmp_path / "a", cfg, threads=1)
    _write_in_process(store_dir, tmp_path / "b", cfg, threads=2)
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "b").iterdir()) and "report.json" in names
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_blas_threads_must_be_positive(store, tmp_path):
    with pytest.raises(PCAError, match="blas_threads must be at least 1"):
        write_pca(store, tmp_path / "pca", 8, 2048, progress=False, blas_threads=0)
    assert not (tmp_path / "pca").exists()


class _FailingStore(Store):
    """Fails while reading the val split, after the train embedding was written."""

    def __init__(self, root, exc):
        super().__init__(root)
        self.exc = exc

    def iter_row_groups(self, split, columns=("X", "cell_type")):
        if split == "val":
            raise self.exc
        yield from super().iter_row_groups(split, columns)


@pytest.mark.parametrize("exc", [RuntimeError("disk on fire"), KeyboardInterrupt()])
def test_failed_write_leaves_nothing(store_dir, tmp_path, exc):
    store = _FailingStore(store_dir, exc)
    with pytest.raises(type(exc)):
        write_pca(store, tmp_path / "pca", 8, 2048, progress=False)
    assert list(tmp_path.iterdir()) == []  # no output, no temporary folder
    (tmp_path / "pca").mkdir()
    (tmp_path / "pca" / "old.txt").write_text("previous run")
    with pytest.raises(type(exc)):
        write_pca(store, tmp_path / "pca", 8, 2048, progress=False)
    assert [p.name for p in tmp_path.iterdir()] == ["pca"]
    assert [p.name for p in (tmp_path / "pca").iterdir()] == ["old.txt"]  # the old output is untouched


# --------------------------------------------------------------------------------------------- pipeline
def test_pipeline_help():
    out = pipeline_help("pca")
    for arg in ("--params", "--store", "--out", "train split only"):
        assert arg in out


def test_pipeline_script_writes_the_folder(census_params, store_dir, tmp_path):
    params = {k: v for k, v in copy.deepcopy(census_params).items() if not k.startswith("_")}
    params["pca"] = {"n_components": 8, "batch_size": 300}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    r = subprocess.run([sys.executable, str(REPO / "pipelines" / "pca.py"), "--params", "params.yaml",
                        "--store", str(store_dir), "--out", "out/pca"],
                       cwd=tmp_path, env={**os.environ, **ONE_THREAD}, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "explain" in r.stdout and "PCA: 8 of 300 genes" in r.stdout
    report = json.loads((tmp_path / "out" / "pca" / "report.json").read_text())
    assert report["n_components"] == 8 and report["batch_size"] == 300
    z, y = load_embedding(tmp_path / "out" / "pca", "test")
    assert z.shape == (report["rows"]["test"], 8) and len(y) == len(z)
