"""CellTypist baseline: subsample, fit with the real celltypist.train, scoring in the store's label space."""

from __future__ import annotations

import logging
import time

import numpy as np
import pytest

from sctab.data.store import Store
from sctab.evaluate.metrics import macro_f1
from sctab.models.celltypist_model import (
    CellTypistConfigError,
    check_config,
    fit_celltypist,
    load_celltypist,
    predict_labels,
    predict_proba,
    sample_indices,
    sample_train,
    save_celltypist,
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


def test_sample_train_is_a_deterministic_subsample_of_the_store_rows(store, config, sample):
    x, y = sample
    n = config["n_cells"]
    assert x.shape == (n, store.n_genes) and x.dtype == np.float32 and y.shape == (n,) and y.dtype == np.int64
    x2, y2 = sample_train(store, n, config["seed"])
    np.testing.assert_array_equal(x, x2)
    np.testing.assert_array_equal(y, y2)
    x_all, y_all = _train_rows(store)
    idx = sample_indices(len(y_all), n, config["seed"])
    assert len(np.unique(idx)) == n
    np.testing.assert_array_equal(x, x_all[idx])
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
