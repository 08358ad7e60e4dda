"""The `pca` stage: incremental PCA streamed over the train split (paper, Methods "XGBoost model")."""

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
from sklearn.decomposition import PCA, IncrementalPCA

from sctab.data.pca import PCAError, PCAModel, fit_pca, load_embedding, write_pca
from sctab.data.store import Store
from tests.conftest import pipeline_help

REPO = Path(__file__).resolve().parents[1]
SPLITS = ("train", "val", "test")


# small matrices: one BLAS thread avoids spin-waiting threads on a busy 2-core machine (10x slower there)
ONE_THREAD = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


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
def fitted(store, cfg) -> IncrementalPCA:
    return fit_pca(store, cfg["n_components"], cfg["batch_size"], progress=False)


@pytest.fixture(scope="module")
def written(store, cfg, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("pca") / "pca"
    return out, write_pca(store, out, cfg["n_components"], cfg["batch_size"], progress=False)


def _record_batches(monkeypatch) -> list[int]:
    sizes: list[int] = []
    original = IncrementalPCA.partial_fit

    def partial_fit(self, X, *args, **kwargs):
        sizes.append(len(X))
        return original(self, X, *args, **kwargs)

    monkeypatch.setattr(IncrementalPCA, "partial_fit", partial_fit)
    return sizes


# ------------------------------------------------------------------------------------------------- fit
def test_streamed_fit_equals_in_memory_incremental_pca(fitted, train_x, cfg, store):
    """Streaming changes nothing: same batches (sklearn also merges a short last batch) as fit() in memory."""
    k = cfg["n_components"]
    assert train_x.shape[0] > 2 * cfg["batch_size"], "the fixture must need several batches"
    assert fitted.components_.shape == (k, store.n_genes) and fitted.n_samples_seen_ == len(train_x)
    ref = IncrementalPCA(n_components=k, batch_size=cfg["batch_size"]).fit(train_x)
    np.testing.assert_allclose(fitted.explained_variance_ratio_, ref.explained_variance_ratio_, rtol=1e-4)
    np.testing.assert_allclose(fitted.components_, ref.components_, atol=1e-3)
    np.testing.assert_allclose(fitted.mean_, train_x.astype(np.float64).mean(axis=0), atol=1e-5)


@pytest.mark.parametrize("batch_size, rel", [(512, 0.05), (2048, 0.02)])
def test_streamed_fit_explains_nearly_as_much_as_full_pca(store, train_x, cfg, batch_size, rel):
    """IncrementalPCA truncates to k components after every batch, so small batches lose a little
    (more on this flat synthetic spectrum than on real data); never more than the exact top-k subspace."""
    k = cfg["n_components"]
    pca = fit_pca(store, k, batch_size, progress=False)
    best = PCA(n_components=k, svd_solver="full").fit(train_x.astype(np.float64)).explained_variance_ratio_.sum()
    ours = pca.explained_variance_ratio_.sum()
    assert ours == pytest.approx(best, rel=rel) and ours <= best + 1e-6
    xc = train_x.astype(np.float64) - train_x.mean(axis=0, dtype=np.float64)
    captured = ((xc @ pca.components_.T.astype(np.float64)) ** 2).sum() / (xc**2).sum()  # of its subspace
    assert captured == pytest.approx(best, rel=rel) and captured <= best + 1e-6


def test_model_transform_equals_sklearn(fitted, train_x, store):
    model = PCAModel.from_sklearn(fitted, store.var["feature_id"])
    z = model.transform(train_x[:500])
    ref = fitted.transform(train_x[:500])
    assert z.dtype == np.float32 and z.shape == ref.shape
    np.testing.assert_allclose(z, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
    np.testing.assert_allclose(model.transform(train_x[:5].astype(np.float64)), ref[:5], rtol=1e-4,
                               atol=1e-4 * np.abs(ref).max())
    with pytest.raises(PCAError, match=r"expects \(cells, 300 genes\)"):
        model.transform(train_x[:5, :10])


@pytest.mark.parametrize("case", ["short remainder", "long remainder", "single batch"])
def test_every_train_row_is_fitted_in_big_enough_batches(store, cfg, monkeypatch, case):
    k, n = cfg["n_components"], store.split("train").n_rows
    if case == "single batch":
        b = n + 100
    else:
        want = (lambda r: 0 < r < k) if case == "short remainder" else (lambda r: r >= k)
        b = next(b for b in range(max(k, 256), n // 2) if want(n % b))
    sizes = _record_batches(monkeypatch)
    pca = fit_pca(store, k, b, progress=False)
    assert pca.n_samples_seen_ == n and sum(sizes) == n
    assert min(sizes) >= k
    if case == "short remainder":  # merged into the batch before it
        assert sizes[:-1] == [b] * (len(sizes) - 1) and sizes[-1] == b + n % b
    elif case == "long remainder":
        assert sizes == [b] * (n // b) + [n % b]
    else:
        assert sizes == [n]


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
    (32, 31, "batch_size=31 is smaller than n_components=32"),
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
    pca = fit_pca(small, 16, 512, progress=False)  # one short batch, still >= n_components
    assert pca.n_samples_seen_ == 20


# ----------------------------------------------------------------------------------------------- model
def test_npz_round_trip_without_pickle(fitted, store, train_x, tmp_path):
    model = PCAModel.from_sklearn(fitted, store.var["feature_id"])
    path = model.save(tmp_path / "pca.npz")
    with np.load(path, allow_pickle=False) as z:
        assert z["components"].dtype == np.float32 and z["mean"].dtype == np.float32
        assert z["feature_id"].tolist() == store.var["feature_id"].astype(str).tolist()
    back = PCAModel.load(path)
    assert PCAModel.load(tmp_path).n_components == model.n_components  # the folder works too
    assert back.n_samples_seen == len(train_x) and back.feature_id == model.feature_id
    np.testing.assert_array_equal(back.components, model.components)
    np.testing.assert_array_equal(back.explained_variance_ratio, fitted.explained_variance_ratio_)
    np.testing.assert_array_equal(back.transform(train_x[:100]), model.transform(train_x[:100]))


def test_load_errors(fitted, store, tmp_path):
    with pytest.raises(PCAError, match="does not exist"):
        PCAModel.load(tmp_path / "missing.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip file")
    with pytest.raises(PCAError, match="cannot read"):
        PCAModel.load(tmp_path / "junk.npz")
    np.savez(tmp_path / "partial.npz", components=np.zeros((2, 3), np.float32))
    with pytest.raises(PCAError, match="lacks .*mean"):
        PCAModel.load(tmp_path / "partial.npz")
    with pytest.raises(PCAError, match="feature ids"):
        PCAModel.from_sklearn(fitted, ["a", "b"])
    with pytest.raises(PCAError, match="not fitted"):
        PCAModel.from_sklearn(IncrementalPCA(4), ["a"])


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
    assert report["explained_variance_ratio"] == pytest.approx(fitted.explained_variance_ratio_.sum(), rel=1e-6)
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
