"""One shape for every model kind: the classifier interface, the model-folder reader/writer, predictions on a store."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from sctab import models
from sctab.data.pca import load_embedding
from sctab.data.store import Store
from sctab.evaluate.predict import predict_split, predict_split_members
from sctab.models import ClassifierError, Ensemble, FeatureSpace, ModelFolderError, TorchClassifier, build_model
from sctab.models.xgboost_model import predict_proba as xgb_proba
from sctab.train.baselines import train_baseline
from sctab.train.spec import BaselineSpec

TABNET = {"n_d": 8, "n_a": 8, "n_shared": 1, "n_independent": 1, "virtual_batch_size": 64}


@pytest.fixture(scope="module", autouse=True)
def _threads():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def store(store_dir):
    return Store(store_dir)


@pytest.fixture(scope="module")
def test_codes(store):
    return store.read_obs("test", ("cell_type",))["cell_type"].to_numpy()


def _neural(store, name="linear", seed=0, arch=None) -> TorchClassifier:
    torch.manual_seed(seed)
    module = build_model(name, store.n_genes, store.n_classes, **(arch or {}))
    return TorchClassifier(kind=name, module=module.eval(), space=FeatureSpace.of(store), config=dict(arch or {}))


def _save_neural(store, out, name="linear", seed=0, arch=None, run_id="run-lin"):
    return models.save(out, _neural(store, name, seed, arch), target_sum=10_000.0,
                       meta={"run_id": run_id, "seed": seed}, metrics={}, history=[])


@pytest.fixture(scope="module")
def linear_dir(store, tmp_path_factory):
    return _save_neural(store, tmp_path_factory.mktemp("lin") / "linear")


@pytest.fixture(scope="module")
def xgboost(store, pca_dir):
    spec = BaselineSpec(model="xgboost", store=str(store.root), pca_dir=str(pca_dir),
                        config={"n_estimators": 5, "max_depth": 2, "nthread": 1})
    return train_baseline(spec)[0]


@pytest.fixture(scope="module")
def celltypist(store, census_params):
    config = {**census_params["models"]["celltypist"], "n_cells": 600, "epochs": 1, "batch_number": 5}
    return train_baseline(BaselineSpec(model="celltypist", store=str(store.root), config=config))[0]


def _check_probs(y, p, store, test_codes):
    assert p.shape == (len(test_codes), store.n_classes) and p.dtype == np.float32
    np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-4)
    np.testing.assert_array_equal(y, test_codes)
    assert y.dtype == np.int64


def test_every_kind_has_one_shape_and_survives_its_folder(store, tmp_path, xgboost, celltypist):
    """Each kind: genes and classes of the store, predict_proba on log1p rows, the same numbers after
    save -> load through the one writer and reader."""
    x = next(store.iter_row_groups("test", ("X",)))["X"][:50]
    kinds = {"linear": _neural(store), "mlp": _neural(store, "mlp"), "sctab": _neural(store, "sctab", arch=TABNET),
             "xgboost": xgboost, "celltypist": celltypist}
    assert set(kinds) == set(models.KINDS)
    for kind, clf in kinds.items():
        assert clf.kind == kind and clf.genes == store.var["feature_id"].tolist() and clf.classes == store.classes
        p = clf.predict_proba(x)
        assert p.shape == (50, store.n_classes) and p.dtype == np.float32
        np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-4)
        folder = models.save(tmp_path / kind, clf, target_sum=10_000.0, meta={"run_id": f"run-{kind}"})
        back = models.load(folder, trust_pickle=True)  # folders this test just wrote
        assert type(back) is type(clf) and back.kind == kind and back.run_id == f"run-{kind}"
        assert back.path == folder and back.meta["normalisation"] == {"target_sum": 10_000.0, "log1p": True}
        np.testing.assert_array_equal(back.predict_proba(x), p)
        with pytest.raises(ClassifierError, match="expected \\(cells"):
            clf.predict_proba(x[:, :-1])


def test_linear_predictions_over_a_split(store, linear_dir, test_codes):
    clf = models.load(linear_dir)
    assert (clf.kind, clf.run_id, clf.path) == ("linear", "run-lin", linear_dir)
    y, p = predict_split(clf, store, "test")
    _check_probs(y, p, store, test_codes)
    y2, members = predict_split_members(clf, store, "test")
    assert len(members) == 1 and np.array_equal(members[0], p) and np.array_equal(y2, y)


def test_ensemble_is_the_members_mean(store, tmp_path, test_codes):
    ens = tmp_path / "sctab"
    for s in (1, 0):
        _save_neural(store, ens / f"seed_{s}", "sctab", seed=s, arch=TABNET, run_id=f"member-{s}")
    models.save_ensemble_summary(ens, {"model": "sctab", "seeds": [0, 1], "parent_run_id": "parent",
                                       "members": {"seed_0": "member-0", "seed_1": "member-1"}})
    clf = models.load(ens)
    assert isinstance(clf, Ensemble) and (clf.kind, clf.run_id, clf.path) == ("sctab-ensemble", "parent", ens)
    assert [m.run_id for m in clf.members] == ["member-0", "member-1"] and clf.names == ["seed_0", "seed_1"]
    y, members = predict_split_members(clf, store, "test")
    assert len(members) == 2 and not np.allclose(members[0], members[1])
    for p in members:
        _check_probs(y, p, store, test_codes)
    y_mean, mean = predict_split(clf, store, "test")
    _check_probs(y_mean, mean, store, test_codes)
    np.testing.assert_allclose(mean, Ensemble.mean(members), atol=1e-6)
    # ensemble.json without members falls back to the seed_*/ folders; none at all is an error
    (ens / "ensemble.json").write_text(json.dumps({"model": "sctab"}))
    assert [m.path.name for m in models.load(ens).members] == ["seed_0", "seed_1"]
    empty = tmp_path / "empty_ens"
    empty.mkdir()
    (empty / "ensemble.json").write_text("{}")
    with pytest.raises(ModelFolderError, match="no member folders"):
        models.load(empty)
    with pytest.raises(ClassifierError, match="different kinds"):
        Ensemble(members_=[_neural(store), _neural(store, "mlp")])


def test_xgboost_classifier_uses_its_own_pca(store, pca_dir, tmp_path, test_codes, xgboost):
    clf = models.load(models.save(tmp_path / "xgboost", xgboost, target_sum=10_000.0, meta={"run_id": "run-xgb"}))
    assert (clf.kind, clf.run_id) == ("xgboost", "run-xgb")
    y, p = predict_split(clf, store, "test")
    _check_probs(y, p, store, test_codes)
    # the same numbers as the booster on the pca stage's embedding of the test split
    z, y_emb = load_embedding(pca_dir, "test")
    np.testing.assert_array_equal(y, y_emb)
    np.testing.assert_allclose(p, xgb_proba(xgboost.booster, z, store.n_classes), atol=1e-5)


def test_celltypist_needs_trust(store, tmp_path, test_codes, celltypist):
    from sctab.security import UntrustedPickleError

    out = models.save(tmp_path / "celltypist", celltypist, target_sum=10_000.0, meta={"run_id": "run-ct"})
    with pytest.raises(UntrustedPickleError):
        models.load(out)
    clf = models.load(out, trust_pickle=True)  # the folder this test just wrote
    y, p = predict_split(clf, store, "test")
    _check_probs(y, p, store, test_codes)


def test_model_folder_errors(store, linear_dir, tmp_path):
    with pytest.raises(ModelFolderError, match="does not exist"):
        models.load(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelFolderError, match="no model.yaml"):
        models.load(tmp_path / "empty")

    unknown = tmp_path / "unknown"
    shutil.copytree(linear_dir, unknown)
    meta = yaml.safe_load((unknown / "model.yaml").read_text())
    (unknown / "model.yaml").write_text(yaml.safe_dump({**meta, "model": "lightgbm"}))
    with pytest.raises(ModelFolderError, match="lightgbm"):
        models.load(unknown)

    incomplete = tmp_path / "incomplete"
    shutil.copytree(linear_dir, incomplete)
    (incomplete / "model.pt").unlink()
    with pytest.raises(ModelFolderError, match="incomplete.*model.pt"):
        models.load(incomplete)

    genes = tmp_path / "genes"
    shutil.copytree(linear_dir, genes)
    var = pd.read_parquet(genes / "var.parquet")
    var.loc[3, "feature_id"] = "ENSG_NOT_IN_STORE"
    var.to_parquet(genes / "var.parquet", index=False)
    with pytest.raises(ClassifierError, match="genes.*position 3"):
        predict_split(models.load(genes), store, "test")

    classes = tmp_path / "classes"
    shutil.copytree(linear_dir, classes)
    ct = pd.read_parquet(classes / "cell_type.parquet")
    ct.iloc[::-1].reset_index(drop=True).to_parquet(classes / "cell_type.parquet", index=False)
    with pytest.raises(ClassifierError, match="classes"):
        predict_split(models.load(classes), store, "test")
