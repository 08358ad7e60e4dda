"""Where runs go and what every run carries: tracking URI, experiments, lineage tags.

Default store: ``sqlite:///<project>/mlruns/mlflow.db`` with artifacts under ``<project>/mlruns/artifacts``;
``MLFLOW_TRACKING_URI`` overrides (a team server, see infra/mlflow). The project is the nearest folder
holding ``dvc.yaml`` above the working directory, so copies of the repository track into themselves.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml

from sctab import provenance
from sctab.params_schema import section

DEFAULT_DB = "mlruns/mlflow.db"


def project_root(start: str | os.PathLike | None = None) -> Path:
    here = Path(start or os.getcwd()).resolve()
    for d in (here, *here.parents):
        if (d / "dvc.yaml").exists():
            return d
    return here


def tracking_uri(root: str | os.PathLike | None = None) -> str:
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    db = project_root(root) / DEFAULT_DB
    db.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{db}"


URI_VARIABLES = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")


@contextmanager
def fluent_uris(uri: str | None = None) -> Iterator[str]:
    """Point MLflow's fluent API (``mlflow.register_model``, ``log_model``, ``download_artifacts``) at ``uri``
    (default :func:`tracking_uri`) for tracking and registry, for the block only.

    Why scoped: ``mlflow.set_tracking_uri`` / ``set_registry_uri`` also write ``MLFLOW_*_URI`` into
    ``os.environ``, so a library call would hand its store to every later call and every child process
    (a `make serve` started later looked for models in a test's throw-away registry). On exit both
    variables and MLflow's own settings are as they were.
    """
    import mlflow
    from mlflow.tracking import _model_registry, _tracking_service

    uri = uri or tracking_uri()
    saved_env = {k: os.environ.get(k) for k in URI_VARIABLES}
    # MLflow's own settings (None when never set: then the variables decide, as before the block)
    saved = (_tracking_service.utils._tracking_uri, _model_registry.utils._registry_uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        yield uri
    finally:
        mlflow.set_tracking_uri(saved[0])
        _model_registry.utils._registry_uri = saved[1]
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _is_local_default(uri: str) -> bool:
    return uri.startswith("sqlite:///") and uri.endswith(DEFAULT_DB)


class TrackingServerError(RuntimeError):
    """The MLflow tracking server cannot be reached or refuses the request (after MLflow's own retries)."""


def _is_remote(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def explain_tracking_error(uri: str, error: BaseException) -> str:
    """One clear sentence about a failed request to a tracking server: which server, why, what to check."""
    text = str(error).splitlines()[0][:300] if str(error) else type(error).__name__
    if any(s in text for s in ("401", "Unauthorized", "403", "PERMISSION_DENIED", "Permission denied")):
        hint = "check MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD and the user's permissions"
    else:
        hint = ("is the server running? MLflow retried the request (MLFLOW_HTTP_REQUEST_MAX_RETRIES, "
                "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR); raise them to ride out longer restarts")
    return f"MLflow tracking server {uri} failed: {text} ({hint})"


def experiment_id(name: str, uri: str | None = None) -> str:
    """Id of the named experiment, created on first use (artifacts beside the local db by default).

    Against a tracking server this is the first request of every entry point, so an unreachable server or
    wrong credentials end here, before any training, with a :class:`TrackingServerError` that says which.
    """
    uri = uri or tracking_uri()
    if not _is_remote(uri):
        return _experiment_id(name, uri)
    try:
        return _experiment_id(name, uri)
    except Exception as e:  # MlflowException, requests' ConnectionError/RetryError
        raise TrackingServerError(explain_tracking_error(uri, e)) from e


def _experiment_id(name: str, uri: str) -> str:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            client.restore_experiment(exp.experiment_id)
        return exp.experiment_id
    location = None
    if _is_local_default(uri):
        db = Path(uri[len("sqlite:///"):])
        location = (db.parent / "artifacts" / name).as_uri()
    return client.create_experiment(name, artifact_location=location)


def git_commit(root: str | os.PathLike | None = None) -> str:
    """HEAD of the project's checkout, ``-dirty`` only when source paths changed (sctab.provenance)."""
    return provenance.git_commit(project_root(root))


def data_version(root: str | os.PathLike | None = None, path: str = "data/store") -> str:
    """``<path>@<md5>`` from dvc.lock: the store version a model was trained on ("unversioned" without a lock)."""
    lock = project_root(root) / "dvc.lock"
    if not lock.exists():
        return "unversioned"
    stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
    for stage in stages.values():
        for out in stage.get("outs", []) or []:
            if out.get("path") == path:
                return f"{path}@{out.get('md5', '?')}"
    return "unversioned"


def lineage_tags(params: dict, **extra) -> dict[str, str]:
    """Tags every run carries: git commit, profile, data version, plus the caller's (seed, model type...)."""
    tags = {
        "git_commit": git_commit(),
        "profile": str(section(params, "profile") or "unknown"),
        "data_version": data_version(),
    }
    tags.update({k: str(v) for k, v in extra.items() if v is not None})
    return tags


def flatten(d: dict, prefix: str = "") -> dict[str, str]:
    """Nested params as MLflow params (``a.b.c`` keys, values as strings, at most 6000 chars each)."""
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = str(v)[:6000]
    return out
