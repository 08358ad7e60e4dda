"""The evaluate stage end to end on small model folders: metrics, plots, report, MLflow."""

from __future__ import annotations

import json

import pytest

from sctab.data.store import Store


def _neural(store, out, name, seed, arch=None, run_id=None):
    import torch

    from sctab import models
    from sctab.models import FeatureSpace, TorchClassifier, build_model

    torch.manual_seed(seed)
    model = build_model(name, store.n_genes, store.n_classes, **(arch or {}))
    history = [{"epoch": e, "val_loss": 2.0 - 0.1 * e, "val_f1_macro": 0.2 + 0.05 * e} for e in range(3)]
    clf = TorchClassifier(kind=name, module=model, space=FeatureSpace.of(store), config=dict(arch or {}))
    return models.save(out, clf, target_sum=10_000.0, meta={"run_id": run_id, "seed": seed}, history=history)


def test_evaluate_stage(store_dir, pca_dir, census_params, tracking, tmp_path):
    from mlflow.tracking import MlflowClient

    from sctab.evaluate.comparison import evaluate_models
    from sctab.train import fit, make_spec

    store = Store(store_dir)
    models = tmp_path / "models"
    _neural(store, models / "linear", "linear", 0)
    arch = {"n_d": 8, "n_a": 8, "n_shared": 1, "n_independent": 1, "virtual_batch_size": 64}
    for s in (0, 1):
        _neural(store, models / "sctab" / f"seed_{s}", "sctab", s, arch)
    (models / "sctab" / "ensemble.json").write_text(json.dumps({"model": "sctab", "seeds": [0, 1]}))
    xgb = fit(make_spec(census_params, "xgboost", store=store_dir, pca_dir=pca_dir), census_params, models / "xgboost")

    summary = evaluate_models(models, store_dir, tmp_path / "eval", census_params, embedding_cells=300)
    m = summary["models"]
    assert list(m) == ["sctab", "xgboost", "linear"]  # the paper's order
    for name, d in m.items():
        assert 0.0 <= d["test_f1_macro"] <= 1.0 and d["test_nll"] > 0, name
    assert m["xgboost"]["test_f1_macro"] == pytest.approx(xgb.metrics["test_f1_macro"], abs=1e-6)
    assert 0.0 <= m["sctab"]["ece"] <= 1.0 and m["sctab"]["members"] == 2 and "uncertainty_auroc" in m["sctab"]
    assert set(summary["per_organ_f1"]["linear"]) and "lung" in summary["per_organ_f1"]["linear"]

    out = tmp_path / "eval"
    assert json.loads((out / "metrics.json").read_text())["models"]["linear"]["test_f1_macro"] == \
        m["linear"]["test_f1_macro"]
    html = (out / "report" / "index.html").read_text()
    for fig in ("model_comparison", "organ_f1", "validation_curves", "f1_vs_training_cells",
                "uncertainty_embedding", "cell_type_embedding", "reliability"):
        assert (out / "report" / "figures" / f"{fig}.png").stat().st_size > 1000, fig
        assert f"figures/{fig}.png" in html, fig
    assert census_params["profile"] in html and "0.8295" in html  # the profile, and the paper beside us
    assert "nearest neighbours" in html and "a test bed we built, not biology" in html
    curves = (out / "plots" / "validation_curves.csv").read_text()
    assert "sctab seed 0" in curves and "linear" in curves
    assert (out / "plots" / "per_class_f1.csv").exists() and (out / "plots" / "reliability.csv").exists()

    client = MlflowClient(tracking)
    run = client.get_run(xgb.run_id)
    assert run.data.metrics["eval_test_f1_macro"] == pytest.approx(m["xgboost"]["test_f1_macro"])
    ev = client.search_runs([client.get_experiment_by_name("evaluate").experiment_id])
    assert len(ev) == 1 and "report" in {a.path for a in client.list_artifacts(ev[0].info.run_id)}


def test_evaluate_without_models_says_so(store_dir, census_params, tmp_path):
    from sctab.evaluate.comparison import evaluate_models

    (tmp_path / "models").mkdir()
    with pytest.raises(FileNotFoundError, match="train stages"):
        evaluate_models(tmp_path / "models", store_dir, tmp_path / "eval", census_params, log_mlflow=False)
    assert not (tmp_path / "eval" / "report").exists()
