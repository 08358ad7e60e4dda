"""CellTypist baseline: subsample, fit with the real celltypist.train, scoring in the store's label space."""

from __future__ import annotations

import logging
import time

import numpy as np
import pytest
import scipy.sparse as sp

from sctab.data.store import Store
from sctab.evaluate.metrics import macro_f1
from sctab.models.celltypist_model import (
    GIB,
    INT32_NNZ,
    CellTypistConfigError,
    cells_that_fit,
    check_config,
    estimate_peak_bytes,
    fit_celltypist,
    load_celltypist,
    min_cells,
    plan_sample,
    predict_labels,
    predict_proba,
    sample_indices,
    sample_train,
    save_celltypist,
    train_density,
)


@pytest.fixture(scope="module")
def store(store_dir) -> Store:
    return Store(store_dir)


@pytest.fixture(scope="module")
def config(census_params) -> dict:
    return dict(census_params["models"]["celltypist"])


@pytest.fixture(scope="module")
def sample(store, config):
    return sample_train(store, config["n_cells"], config["seed"])


@pytest.fixture(scope="module")
def fitted(store, config, sample):
    t0 = time.perf_counter()
    model = fit_celltypist(*sample, store, config)
    print(f"celltypist fit on {len(sample[1])} cells: {time.perf_counter() - t0:.2f} s")
    return model


@pytest.fixture(scope="module")
def val(store):
    groups = list(store.iter_row_groups("val"))
    return np.concatenate([g["X"] for g in groups]), np.concatenate([g["cell_type"] for g in groups])


def _train_rows(store):
    groups = list(store.iter_row_groups("train"))
    return np.concatenate([g["X"] for g in groups]), np.concatenate([g["cell_type"] for g in groups])


def test_sample_train_is_a_deterministic_sparse_subsample_of_the_store_rows(store, config, sample):
    x, y = sample
    n = config["n_cells"]
    assert isinstance(x, sp.csr_matrix) and x.has_canonical_format  # an spmatrix: what celltypist sees as sparse
    assert x.shape == (n, store.n_genes) and x.dtype == np.float32 and y.shape == (n,) and y.dtype == np.int64
    x2, y2 = sample_train(store, n, config["seed"])
    np.testing.assert_array_equal(x.toarray(), x2.toarray())
    np.testing.assert_array_equal(y, y2)
    x_all, y_all = _train_rows(store)
    idx = sample_indices(len(y_all), n, config["seed"])
    assert len(np.unique(idx)) == n
    np.testing.assert_array_equal(x.toarray(), x_all[idx])  # the dense rows' values, bit for bit
    assert x.nnz == np.count_nonzero(x_all[idx]) < x.shape[0] * x.shape[1]  # only the non-zeros are held
    np.testing.assert_array_equal(y, y_all[idx])
    assert not np.array_equal(sample_indices(len(y_all), n, config["seed"] + 1), idx)


def test_sample_train_takes_everything_when_asked_for_more(store, caplog):
    n = store.split("train").n_rows
    with caplog.at_level(logging.WARNING, logger="sctab.models.celltypist_model"):
        x, y = sample_train(store, n + 10, 0)
    assert len(y) == n and x.shape == (n, store.n_genes)
    assert "training on all of them" in caplog.text


def test_fit_beats_chance_and_selects_features(store, fitted, val):
    assert 1 <= len(fitted.features) < store.n_genes  # feature selection kept a subset of the genes
    x, y = val
    pred = predict_labels(fitted, x, store)
    f1 = macro_f1(y, pred, n_classes=store.n_classes)
    # the synthetic types overlap (sklearn's LogisticRegression on all of train gets ~0.5 on this store);
    # chance is ~1/n_types (~0.05 for 19 types), predicting the commonest type less
    majority = macro_f1(y, np.full_like(y, np.bincount(y).argmax()), n_classes=store.n_classes)
    assert f1 > max(4.0 / len(np.unique(y)), majority + 0.15), (f1, majority)


def test_probabilities_follow_celltypists_best_match(store, fitted, val):
    import anndata as ad
    import celltypist

    x, _ = val
    p = predict_proba(fitted, x, store)
    assert p.shape == (len(x), store.n_classes) and p.dtype == np.float32
    assert np.all(p >= 0)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-5)
    adata = ad.AnnData(x.copy())
    adata.var_names = store.var["feature_id"].astype(str).to_numpy()
    result = celltypist.annotate(adata, model=fitted, majority_voting=False)
    code = {lab: i for i, lab in enumerate(store.classes)}
    theirs = np.array([code[str(lab)] for lab in result.predicted_labels["predicted_labels"]])
    np.testing.assert_array_equal(p.argmax(axis=1), theirs)
    np.testing.assert_array_equal(predict_labels(fitted, x, store), theirs)
    # same ordering of classes as CellTypist's own (un-normalised) sigmoids
    raw = result.probability_matrix.to_numpy()
    cols = [code[str(c)] for c in result.probability_matrix.columns]
    np.testing.assert_allclose(p[:, cols], raw / raw.sum(axis=1, keepdims=True), rtol=1e-4, atol=1e-6)


def test_predict_split_streams_the_same_numbers(store, fitted, val):
    from sctab.evaluate import predict_split
    from sctab.models import FeatureSpace
    from sctab.models.celltypist_model import CellTypistClassifier

    y, p = predict_split(CellTypistClassifier(fitted, FeatureSpace.of(store)), store, "val")
    np.testing.assert_array_equal(y, val[1])
    np.testing.assert_allclose(p, predict_proba(fitted, val[0], store), rtol=1e-6)


def test_save_load_round_trip(store, fitted, val, tmp_path):
    import anndata as ad
    import celltypist

    path = save_celltypist(fitted, tmp_path / "m")
    assert path.name == "model.pkl" and path.is_file()
    loaded = load_celltypist(tmp_path / "m", trust_pickle=True)
    np.testing.assert_array_equal(predict_proba(loaded, val[0], store), predict_proba(fitted, val[0], store))
    adata = ad.AnnData(val[0][:50].copy())
    adata.var_names = store.var["feature_id"].astype(str).to_numpy()
    labels = celltypist.annotate(adata, model=str(path)).predicted_labels["predicted_labels"].astype(str)
    code = {lab: i for i, lab in enumerate(store.classes)}
    np.testing.assert_array_equal([code[v] for v in labels], predict_labels(fitted, val[0][:50], store))
    with pytest.raises(FileNotFoundError, match="no CellTypist model"):
        load_celltypist(tmp_path / "nowhere")


def test_fit_is_deterministic_and_leaves_numpys_rng_alone(store, config, sample, fitted, caplog):
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    with caplog.at_level(logging.INFO, logger="celltypist"):
        again = fit_celltypist(*sample, store, config)
    epochs = [r.getMessage() for r in caplog.records if "Epochs:" in r.getMessage()]
    assert len(epochs) == 4, epochs  # first and last epoch of each of the two passes
    np.testing.assert_array_equal(np.random.get_state()[1], before)
    np.testing.assert_array_equal(again.features, fitted.features)
    np.testing.assert_array_equal(again.classifier.coef_, fitted.classifier.coef_)


def test_class_absent_from_training_gets_zero(store, config, sample, val):
    x, y = sample
    drop = np.bincount(y, minlength=store.n_classes).argmax()
    keep = y != drop
    model = fit_celltypist(x[keep], y[keep], store, config)
    assert store.classes[drop] not in set(map(str, model.cell_types))
    p = predict_proba(model, val[0], store)
    assert np.all(p[:, drop] == 0)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-5)
    assert drop not in set(predict_labels(model, val[0], store))


@pytest.mark.parametrize("bad, match", [
    ({"n_cell": 10}, r"unknown CellTypist setting\(s\) \['n_cell'\]; allowed: .*n_cells"),
    ({"n_cells": 0}, "n_cells must be >= 1"),
    ({"epochs": 0}, "epochs must be >= 1"),
    ({"batch_size": 0}, "batch_size must be >= 1"),
    ({"batch_number": 2.5}, "batch_number must be an integer"),
    ({"alpha": 0.0}, "alpha must be a positive number"),
    ({"C": -1}, "C must be a positive number"),
    ({"feature_selection": "yes"}, "feature_selection must be true or false"),
    ({"with_mean": 1}, "with_mean must be true or false"),
    ({"n_jobs": 0}, "n_jobs must be"),
])
def test_config_errors(config, bad, match):
    with pytest.raises(CellTypistConfigError, match=match):
        check_config({**config, **bad})


def test_config_passes_the_paper_settings(config):
    paper = {"n_cells": 1_500_000, "feature_selection": True, "use_SGD": True, "mini_batch": True,
             "batch_number": 1500, "epochs": 10, "with_mean": False, "seed": 0}
    assert check_config(paper) == paper
    assert check_config({**config, "batch_size": 100.0})["batch_size"] == 100


def test_fit_rejects_data_it_cannot_use(store, config, sample):
    x, y = sample
    with pytest.raises(CellTypistConfigError, match="top_genes"):
        fit_celltypist(x, y, store, {**config, "top_genes": store.n_genes})
    with pytest.raises(CellTypistConfigError, match="batch_size"):
        fit_celltypist(x[:50], y[:50], store, config)
    with pytest.raises(CellTypistConfigError, match="expected"):
        fit_celltypist(x[:, :10], y, store, config)


def test_saturated_sigmoids_keep_celltypists_best_match(store, fitted, val):
    import copy

    loud = copy.deepcopy(fitted)  # huge scores: several classes' sigmoids round to 1.0
    loud.classifier.coef_ = loud.classifier.coef_ * 1e3
    loud.classifier.intercept_ = loud.classifier.intercept_ * 1e3
    p = predict_proba(loud, val[0], store)
    np.testing.assert_array_equal(p.argmax(axis=1), predict_labels(loud, val[0], store))
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-5)


# ---------------------------------------------------------------------------------------- sparse = dense
def test_sparse_sgd_takes_the_dense_steps_only_with_the_intercept_fix():
    """The mechanism: scikit-learn damps intercept steps on sparse rows; with the fix the steps are identical."""
    from sklearn.linear_model import SGDClassifier

    from sctab.models.celltypist_model import _dense_intercept_steps

    rng = np.random.default_rng(0)
    x = (rng.random((400, 30)) * (rng.random((400, 30)) < 0.2)).astype(np.float32)
    y = rng.integers(0, 3, 400)

    def fit(rows, fix):
        clf = SGDClassifier(loss="log_loss", random_state=0)
        with _dense_intercept_steps(fix):
            for s in range(0, 400, 50):
                clf.partial_fit(rows[s:s + 50], y[s:s + 50], classes=np.arange(3))
        return clf

    dense = fit(x, False)
    fixed, plain = fit(sp.csr_matrix(x), True), fit(sp.csr_matrix(x), False)
    np.testing.assert_array_equal(fixed.coef_, dense.coef_)
    np.testing.assert_array_equal(fixed.intercept_, dense.intercept_)
    assert np.abs(plain.intercept_ - dense.intercept_).max() > 1e-3  # without it: another model
    from sklearn.linear_model import _base
    assert _base.SPARSE_INTERCEPT_DECAY == 0.01  # restored


def test_sparse_and_dense_samples_train_the_same_model(store, config, sample, fitted, val):
    """celltypist.train on the CSR sample and on its dense copy: same genes, same scaler. The scalers differ in the
    last bit (sparse multiplies by 1/scale, dense divides) and mini-batch SGD amplifies any last-bit change of its
    input, so the classifiers are held to what a 1-ulp change does to the dense fit itself (on this store: ~54 %
    same labels, ~260 of ~270 genes shared; another seed: ~47 %)."""
    x, y = sample
    no_fs = {**config, "feature_selection": False}
    sparse_model = fit_celltypist(x, y, store, no_fs)
    dense_model = fit_celltypist(x.toarray(), y, store, no_fs)
    np.testing.assert_array_equal(sparse_model.features, dense_model.features)
    np.testing.assert_allclose(sparse_model.scaler.scale_, dense_model.scaler.scale_, rtol=1e-6)
    np.testing.assert_allclose(sparse_model.scaler.var_, dense_model.scaler.var_, rtol=1e-6)
    xd = x.toarray()
    dense = fit_celltypist(xd, y, store, config)
    nudged = np.where(xd > 0, np.nextafter(xd, np.float32(np.inf)), 0).astype(np.float32)
    nudged[0] = xd[0]  # celltypist checks the first row's normalisation
    ulp = fit_celltypist(nudged, y, store, config)
    vx, vy = val

    def same(a, b):
        return float(np.mean(predict_labels(a, vx, store) == predict_labels(b, vx, store)))

    f1 = {k: macro_f1(vy, predict_labels(m, vx, store), n_classes=store.n_classes)
          for k, m in (("sparse", fitted), ("dense", dense))}
    shared = len(np.intersect1d(fitted.features, dense.features))
    print(f"val macro F1 sparse {f1['sparse']:.4f} dense {f1['dense']:.4f}; same labels sparse/dense "
          f"{same(fitted, dense):.1%}, dense/dense+1ulp {same(ulp, dense):.1%}; genes shared {shared} of "
          f"{len(dense.features)}")
    assert same(fitted, dense) >= same(ulp, dense) - 0.05
    assert shared >= len(np.intersect1d(ulp.features, dense.features)) - 10
    assert abs(f1["sparse"] - f1["dense"]) < 0.05, f1


# -------------------------------------------------------------------------------------------- budget
def test_memory_formula_and_what_fits():
    genes, density = 19_331, 0.10
    nnz_cell = density * genes
    # the measured points (module docstring): 10k-80k cells at 19,331 genes, 10 % non-zero
    for cells, peak_gb in ((10_000, 1.311), (20_000, 2.104), (40_000, 3.633), (80_000, 6.748)):
        est = estimate_peak_bytes(cells, cells * nnz_cell, genes) / 1e9
        assert peak_gb < est < peak_gb + 0.6, (cells, est, peak_gb)  # a little above: BASE is rounded up
    n = cells_that_fit(32, density, genes)
    assert 400_000 < n < 450_000
    assert estimate_peak_bytes(n, n * nnz_cell, genes) <= 32 * GIB < estimate_peak_bytes(n + 1, (n + 1) * nnz_cell,
                                                                                          genes)
    assert cells_that_fit(64, density, genes) > 2 * n - 20_000  # linear in the budget above BASE
    # past 2**31 non-zeros celltypist densifies: a budget between the two regimes stops below the index limit
    n100 = cells_that_fit(100, density, genes)
    assert n100 * nnz_cell < INT32_NNZ <= (n100 + 1) * nnz_cell
    n400 = cells_that_fit(400, density, genes)  # the paper's 350 GB range: dense regime, the paper's 1.5 M cells
    assert n400 * nnz_cell >= INT32_NNZ and n400 > 1_500_000
    assert estimate_peak_bytes(n400, n400 * nnz_cell, genes) <= 400 * GIB
    assert cells_that_fit(0.5, density, genes) == 0  # below the interpreter's own share


def test_no_budget_takes_n_cells(store, config):
    plan = plan_sample(store, {**config, "max_memory_gib": None})
    assert plan["sample_bound_by"] == "n_cells" and plan["sample_cells_used"] == config["n_cells"]
    assert plan["sample_cells_cap"] is None and plan["max_memory_gib"] is None
    plan = plan_sample(store, {**config, "n_cells": 10**9})
    assert plan["sample_bound_by"] == "train rows" and plan["sample_cells_used"] == store.split("train").n_rows


def test_density_comes_from_the_train_rows(store):
    x, _ = _train_rows(store)
    assert train_density(store, max_groups=10**6) == pytest.approx(np.count_nonzero(x) / x.size)
    assert 0 < train_density(store) < 1


def test_budget_caps_the_sample_and_says_why(store, config, caplog):
    density = train_density(store)
    target = 600  # fewer than config n_cells, more than batch_size
    assert min_cells(config) < target < config["n_cells"]
    gib = estimate_peak_bytes(target, target * density * store.n_genes, store.n_genes) / GIB
    with caplog.at_level(logging.INFO, logger="sctab.models.celltypist_model"):
        plan = plan_sample(store, {**config, "max_memory_gib": gib})
    assert plan["sample_bound_by"] == "memory budget" and abs(plan["sample_cells_used"] - target) <= 1
    assert plan["sample_cells_requested"] == config["n_cells"] and plan["max_memory_gib"] == pytest.approx(gib)
    assert plan["estimated_peak_gib"] <= gib
    assert "bound by memory budget" in caplog.text
    plan = plan_sample(store, {**config, "max_memory_gib": 24})  # the default: n_cells binds on this store
    assert plan["sample_bound_by"] == "n_cells" and plan["sample_cells_cap"] > config["n_cells"]


def test_budget_below_the_smallest_sample_is_an_error(store, config):
    density = train_density(store)
    n = min_cells(config) - 1
    gib = estimate_peak_bytes(n, n * density * store.n_genes, store.n_genes) / GIB
    with pytest.raises(CellTypistConfigError, match=r"max_memory_gib=.* fits only \d+ cells .*batch_size"):
        plan_sample(store, {**config, "max_memory_gib": gib})


def test_stage_info_reports_the_sample(store_dir, store, config):
    from sctab.train.baselines import train_baseline
    from sctab.train.spec import BaselineSpec

    density = train_density(store)
    gib = estimate_peak_bytes(700, 700 * density * store.n_genes, store.n_genes) / GIB
    _, info = train_baseline(BaselineSpec("celltypist", str(store_dir), {**config, "max_memory_gib": gib}))
    assert info["sample_bound_by"] == "memory budget" and info["sample_cells_requested"] == config["n_cells"]
    assert info["train_cells"] == info["sample_cells_used"] and abs(info["sample_cells_used"] - 700) <= 1
    assert info["max_memory_gib"] == pytest.approx(gib) and 0 < info["estimated_peak_gib"] < gib * 1.2
    assert info["sample_train_rows"] == store.split("train").n_rows


@pytest.mark.parametrize("bad", [0, -1, "32", True, float("nan"), float("inf")])
def test_max_memory_gib_errors(config, bad):
    with pytest.raises(CellTypistConfigError, match="max_memory_gib must be a positive number of GiB or null"):
        check_config({**config, "max_memory_gib": bad})


def test_max_memory_gib_accepts_numbers_and_null(config):
    assert check_config({**config, "max_memory_gib": 32})["max_memory_gib"] == 32.0
    assert check_config({**config, "max_memory_gib": None})["max_memory_gib"] is None
