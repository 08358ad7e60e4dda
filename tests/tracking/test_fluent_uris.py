"""MLflow's fluent URIs are scoped: a registration or a download leaves no MLFLOW_*_URI behind."""

import os

import mlflow

from sctab.tracking import fluent_uris


def test_fluent_uris_set_inside_and_restore_unset_variables(tmp_path, monkeypatch):
    for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        monkeypatch.delenv(k, raising=False)
    uri = f"sqlite:///{tmp_path / 'x.db'}"
    with fluent_uris(uri):
        assert mlflow.get_tracking_uri() == uri
        assert mlflow.get_registry_uri() == uri
        assert os.environ["MLFLOW_REGISTRY_URI"] == uri
    assert "MLFLOW_TRACKING_URI" not in os.environ
    assert "MLFLOW_REGISTRY_URI" not in os.environ
    # a variable set after the block is what MLflow reads: nothing of the block shadows it
    later = f"sqlite:///{tmp_path / 'later.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", later)
    assert mlflow.get_tracking_uri() == later


def test_fluent_uris_restore_a_variable_that_was_set(tmp_path, monkeypatch):
    before = f"sqlite:///{tmp_path / 'before.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", before)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    try:
        with fluent_uris(f"sqlite:///{tmp_path / 'inner.db'}"):
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    assert os.environ["MLFLOW_TRACKING_URI"] == before
    assert "MLFLOW_REGISTRY_URI" not in os.environ
    assert mlflow.get_tracking_uri() == before


def test_download_a_registered_alias_with_only_the_project_default(tmp_path, monkeypatch):
    """`make annotate` runs without MLFLOW_TRACKING_URI: models:/name@alias resolves in the project's own
    registry (download_artifacts ignores a registry_uri argument for models:/ URIs; the scope does not)."""
    import mlflow.pyfunc

    from sctab.annotation.resolve import download_model
    from sctab.tracking import tracking_uri

    for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        monkeypatch.delenv(k, raising=False)
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    monkeypatch.chdir(tmp_path)

    class Echo(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input):
            return model_input

    with fluent_uris() as uri:
        assert uri == tracking_uri() and uri.startswith("sqlite:///") and str(tmp_path) in uri
        with mlflow.start_run() as run:
            mlflow.pyfunc.log_model(name="model", python_model=Echo(), pip_requirements=[])
        mv = mlflow.register_model(f"runs:/{run.info.run_id}/model", "tiny")
        mlflow.MlflowClient(uri, registry_uri=uri).set_registered_model_alias("tiny", "champion", mv.version)
    assert "MLFLOW_REGISTRY_URI" not in os.environ
    got = download_model("models:/tiny@champion", tmp_path / "dest")
    assert (got / "MLmodel").exists()
    assert "MLFLOW_TRACKING_URI" not in os.environ and "MLFLOW_REGISTRY_URI" not in os.environ
