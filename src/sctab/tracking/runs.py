"""Where runs go and what every run carries: tracking URI, experiments, lineage tags.

Default store: ``sqlite:///<project>/mlruns/mlflow.db`` with artifacts under ``<project>/mlruns/artifacts``;
``MLFLOW_TRACKING_URI`` overrides (a team server, see infra/mlflow). The project is the nearest folder
holding ``dvc.yaml`` above the working directory, so copies of the repository track into themselves.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import yaml

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


def _is_local_default(uri: str) -> bool:
    return uri.startswith("sqlite:///") and uri.endswith(DEFAULT_DB)


def experiment_id(name: str, uri: str | None = None) -> str:
    """Id of the named experiment, created on first use (artifacts beside the local db by default)."""
    from mlflow.tracking import MlflowClient

    uri = uri or tracking_uri()
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
    """HEAD of the project's git repository, suffixed ``-dirty`` when tracked files changed."""
    cwd = project_root(root)
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{sha}-dirty" if dirty else sha


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
        "profile": str(params.get("profile", "unknown")),
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
