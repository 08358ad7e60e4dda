"""XGBoost on the PCA embedding, and both baselines as tracked MLflow runs with model folders."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from sctab.config import ConfigError
from sctab.data.pca import load_embedding
from sctab.data.store import Store
from sctab.evaluate.metrics import macro_f1
from sctab.models.xgboost_model import (
    EveryNRounds,
    XGBoostConfigError,
    best_rounds,
    check_config,
    fit_xgboost,
    load_xgboost,
    predict_proba,
    save_xgboost,
)
from sctab.train.baselines import BaselineError, baseline_config
from sctab.train.fitting import FitError, fit
from sctab.train.runners import LocalRunner
from sctab.train.spec import make_spec
from tests.conftest import pipeline_help


@pytest.fixture(scope="module")
def xgb_data(store_dir, pca_dir):
    store = Store(store_dir)
    return store, load_embedding(pca_dir, "train"), load_embedding(pca_dir, "val")


def test_check_config_names_the_bad_setting():
    with pytest.raises(XGBoostConfigError, match="max_dept"):
        check_config({"max_dept": 4})
    for bad in ({"eta": 0.0}, {"subsample": 1.5}, {"n_estimators": 0}, {"eta": float("nan")},
                {"early_stopping_rounds": -1}, {"device": "tpu"}):
        with pytest.raises(XGBoostConfigError, match=next(iter(bad))):
            check_config(bad)
    assert check_config({"eta": 0.1, "max_depth": 3})["eta"] == 0.1


def test_xgboost_learns_weighted_and_stops_early(xgb_data):
    store, train, val = xgb_data
    cfg = {"n_estimators": 200, "eta": 0.3, "max_depth": 3, "early_stopping_rounds": 5, "nthread": 1}
    seen = []
    booster = fit_xgboost(train, val, store.n_classes, store.class_weights(), cfg,
                          every=EveryNRounds(4, lambda r, b: seen.append(r)))
    p = predict_proba(booster, val[0], store.n_classes)
    assert p.shape == (len(val[1]), store.n_classes)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-5)
    f1 = macro_f1(val[1], p.argmax(1), store.child_matrix())
    present = len(np.unique(train[1]))
    assert f1 > 2.0 / present, f"val macro F1 {f1:.3f} is near chance ({1 / present:.3f})"
    assert best_rounds(booster) <= booster.num_boosted_rounds() < 200, "early stopping should end before 200 rounds"
    assert seen and seen == list(range(4, booster.num_boosted_rounds() + 1, 4))


def test_xgboost_saved_as_ubj_not_pickle(xgb_data, tmp_path):
    store, train, val = xgb_data
    booster = fit_xgboost(train, val, store.n_classes, store.class_weights(),
                          {"n_estimators": 12, "max_depth": 3, "early_stopping_rounds": 3, "nthread": 1})
    path = save_xgboost(booster, tmp_path)
    assert path.name == "model.ubj" and path.read_bytes()[:1] == b"{"  # UBJSON object, not a pickle (\x80)
    loaded = load_xgboost(tmp_path)
    assert best_rounds(loaded) == best_rounds(booster)
    np.testing.assert_array_equal(predict_proba(loaded, val[0], store.n_classes),
                                  predict_proba(booster, val[0], store.n_classes))
    with pytest.raises(FileNotFoundError):
        load_xgboost(tmp_path / "missing")


def test_baseline_config_rejects_unknown_model_and_setting(census_params):
    with pytest.raises(ConfigError, match="lightgbm"):
        make_spec(census_params, "lightgbm")
    with pytest.raises(ValueError, match="learning_rte"):
        baseline_config(make_spec(census_params, "xgboost", overrides={"learning_rte": 0.1}))
    assert baseline_config(make_spec(census_params, "xgboost", overrides={"eta": 0.2}))["eta"] == 0.2


def _runs(uri):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exps = [e.experiment_id for e in client.search_experiments()]
    return client, client.search_runs(exps)


@pytest.mark.parametrize("model", ["xgboost", "celltypist"])
def test_fit_baseline_tracks_and_writes_folder(model, census_params, store_dir, pca_dir, tracking, tmp_path):
    out = tmp_path / model
    r = fit(make_spec(census_params, model, store=store_dir, pca_dir=pca_dir), census_params, out, experiment="train")
    m = r.metrics
    for k in ("val_f1_macro", "test_f1_macro", "val_loss", "test_accuracy", "train_cells"):
        assert np.isfinite(m[k]), k
    # CellTypist's mini-batch SGD on 1,500 cells spreads 0.26-0.33 over seeds here, dense or sparse (2 of 5
    # dense seeds under 0.3); chance is ~0.05
    assert m["val_f1_macro"] > (0.3 if model == "xgboost" else 0.25)
    files = {p.name for p in out.iterdir()}
    assert {"model.yaml", "var.parquet", "cell_type.parquet", "metrics.json"} <= files
    assert ("model.ubj" in files and "pca.npz" in files) if model == "xgboost" else "model.pkl" in files
    assert json.loads((out / "metrics.json").read_text())["test_f1_macro"] == pytest.approx(m["test_f1_macro"])
    client, runs = _runs(tracking)
    (run,) = runs
    assert run.info.status == "FINISHED" and run.info.run_id == r.run_id
    assert run.data.tags["model_type"] == model and "git_commit" in run.data.tags and "data_version" in run.data.tags
    assert run.data.metrics["final_test_f1_macro"] == pytest.approx(m["test_f1_macro"])
    arts = {a.path for a in client.list_artifacts(run.info.run_id, "model")}
    assert "model/model.yaml" in arts


def test_xgboost_reports_steps_to_mlflow(census_params, store_dir, pca_dir, tracking):
    steps = []

    class Recording(LocalRunner):  # what a Tune trial's runner reports to Tune
        def step_report(self, step, m):
            steps.append((step, m["val_f1_macro"]))

    fit(make_spec(census_params, "xgboost", store=store_dir, pca_dir=pca_dir, report_every=5), census_params,
        runner=Recording())
    assert steps and steps[0][0] == 5 and all(0.0 <= f <= 1.0 for _, f in steps)
    client, (run,) = _runs(tracking)
    hist = client.get_metric_history(run.info.run_id, "val_f1_macro")
    assert [h.step for h in hist] == [s for s, _ in steps]


def test_bad_setting_is_a_failed_run_not_a_silent_one(census_params, store_dir, pca_dir, tracking, tmp_path):
    with pytest.raises(ValueError, match="colsample_bytre"):
        fit(make_spec(census_params, "xgboost", store=store_dir, pca_dir=pca_dir, overrides={"colsample_bytre": 0.5}),
            census_params, tmp_path / "m")
    assert not (tmp_path / "m").exists()
    _, (run,) = _runs(tracking)
    assert run.info.status == "FAILED" and "colsample_bytre" in run.data.tags["error"]


def test_nan_objective_fails_the_run(census_params, store_dir, pca_dir, tracking, monkeypatch):
    import sctab.train.fitting as f  # the module, not the function sctab.train.fit

    monkeypatch.setattr(f, "score_splits", lambda clf, store, splits: {"val_f1_macro": float("nan"),
                                                                       "test_f1_macro": 0.5})
    with pytest.raises(FitError, match="not a number"):
        fit(make_spec(census_params, "xgboost", store=store_dir, pca_dir=pca_dir), census_params)
    _, (run,) = _runs(tracking)
    assert run.info.status == "FAILED"


def test_xgboost_without_pca_says_what_to_run(census_params, store_dir, tracking, tmp_path):
    p = copy.deepcopy(census_params)
    with pytest.raises(BaselineError, match="pca stage"):
        fit(make_spec(p, "xgboost", store=store_dir, pca_dir=tmp_path / "nope"), p)


def test_train_baseline_pipeline_help():
    out = pipeline_help("train_baseline")
    assert "--model" in out and "xgboost" in out and "celltypist" in out


def test_seed_spread_refits_other_seeds_and_writes_their_scores(census_params, store_dir, pca_dir, tracking,
                                                              tmp_path):
    from sctab.train.fitting import seed_spread

    p = copy.deepcopy(census_params)
    p["models"]["xgboost"].update({"n_estimators": 8, "subsample": 0.5})  # the seed moves a subsampled booster
    spec = make_spec(p, "xgboost", store=store_dir, pca_dir=pca_dir)
    first = fit(spec, p, tmp_path / "xgboost")
    spread = seed_spread(spec, p, first, [0, 1, 2])
    assert spread["seeds"] == [0, 1, 2]
    t = spread["test_f1_macro"]
    assert t["values"][0] == pytest.approx(first.metrics["test_f1_macro"], abs=1e-6) and len(set(t["values"])) > 1
    assert t["mean"] == pytest.approx(np.mean(t["values"]), abs=1e-6)
    assert t["sd"] == pytest.approx(np.std(t["values"], ddof=1), abs=1e-6) and t["sd"] > 0
    assert json.loads((tmp_path / "xgboost" / "seeds.json").read_text()) == spread
    client, runs = _runs(tracking)
    extra = [r for r in runs if r.data.tags.get("role") == "seed_spread"]
    assert len(extra) == 2 and {r.data.tags["seed"] for r in extra} == {"1", "2"}
    assert all(r.data.tags["spread_of"] == first.run_id for r in extra)
