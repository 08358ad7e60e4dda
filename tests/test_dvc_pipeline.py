"""End to end: the DVC DAG on a shrunken embedded census, in a throw-away clone of this repo.

Real `dvc` and real `git`: `dvc repro` builds census -> store -> validation, a second `dvc repro`
does nothing, `dvc status` is clean and `dvc push` fills the default local remote. Then a corrupted
store makes the validate stage fail with a message that names the problem.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from tests.conftest import small_params

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _run(args, cwd, check=True):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1"}
    r = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    if check and r.returncode:
        raise AssertionError(f"{' '.join(args)} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return r


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A git clone of the working tree (tracked files as they are now) with a small census profile."""
    dst = tmp_path_factory.mktemp("proj") / "repo"
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True,
                           text=True, check=True).stdout.split()
    for f in files:
        if (REPO / f).is_file():
            (dst / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / f, dst / f)
    params = small_params(Path("data/census/soma"))
    header = "# test profile\n"
    (dst / "params.yaml").write_text(header + yaml.safe_dump(params, sort_keys=False))
    _run(["git", "init", "-q"], dst)
    _run(["git", "add", "-A"], dst)
    _run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"], dst)
    return dst


def test_repro_twice_status_clean_and_push(project):
    r = _run(["dvc", "repro"], project)
    assert "all checks passed" in r.stdout
    for out in ("data/census/soma", "data/extract/obs.parquet", "data/split/assignment.parquet",
                "data/store/train/part.0.parquet", "reports/validation/summary.json",
                "reports/validation/data_docs/index.html", "data/augment/augmentations.npy",
                "models/linear/model.pt", "models/mlp/model.pt", "models/sctab/seed_0/model.pt",
                "models/sctab/seed_1/model.pt", "models/sctab/ensemble.json", "data/pca/pca.npz",
                "models/xgboost/model.ubj", "models/celltypist/model.pkl"):
        assert (project / out).exists(), out
    _check_training(project)
    again = _run(["dvc", "repro"], project)
    assert "didn't change, skipping" in again.stdout and "Running stage" not in again.stdout
    assert "up to date" in _run(["dvc", "status"], project).stdout
    _run(["dvc", "push"], project)
    remote = project / "dvc-remote"
    assert remote.is_dir() and sum(1 for p in remote.rglob("*") if p.is_file()) > 10
    # the remote really holds the outputs: drop the cache and workspace copy, pull them back
    shutil.rmtree(project / ".dvc" / "cache")
    shutil.rmtree(project / "data" / "store")
    _run(["dvc", "pull"], project)
    assert (project / "data/store/train/part.0.parquet").exists()
    assert "up to date" in _run(["dvc", "status"], project).stdout


def _check_training(project: Path) -> None:
    """The train stages: DVC metrics per model, MLflow runs with lineage, ensemble members under one parent."""
    from mlflow.tracking import MlflowClient

    metrics = _run(["dvc", "metrics", "show", "--json"], project).stdout
    for model in ("linear", "mlp", "sctab", "xgboost", "celltypist"):
        assert f"reports/train/{model}.json" in metrics
        assert json.loads((project / f"reports/train/{model}.json").read_text())["test_f1_macro"] > 0.2, model
    client = MlflowClient(f"sqlite:///{project}/mlruns/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("train").experiment_id])
    by_type = {}
    for r in runs:
        by_type.setdefault(r.data.tags["model_type"], []).append(r)
        assert r.info.status == "FINISHED"
        assert r.data.tags["data_version"].startswith("data/store@")
    assert sorted(by_type) == ["celltypist", "linear", "mlp", "sctab", "sctab-ensemble", "xgboost"]
    (parent,) = by_type["sctab-ensemble"]
    members = by_type["sctab"]
    assert sorted(m.data.tags["seed"] for m in members) == ["0", "1"]
    assert all(m.data.tags["mlflow.parentRunId"] == parent.info.run_id for m in members)
    assert all(len(client.get_metric_history(m.info.run_id, "val_f1_macro")) == 10 for m in members)
    ensemble = json.loads((project / "models/sctab/ensemble.json").read_text())
    assert set(ensemble["members"].values()) == {m.info.run_id for m in members}


def test_validate_stage_fails_on_a_nan_row(project):
    if not (project / "data/store/test").exists():
        pytest.skip("needs the store of the previous test")
    part = project / "data/store/test/part.0.parquet"
    tbl = pq.read_table(part)
    x = np.array(tbl.column("X").to_pylist(), dtype=np.float32)
    x[3, 0] = np.nan
    tbl = tbl.set_column(tbl.schema.get_field_index("X"), "X", pa.array(list(x), type=pa.list_(pa.float32())))
    part.unlink()  # the workspace copy may be a link into the DVC cache
    pq.write_table(tbl, part, row_group_size=64)
    r = _run(["dvc", "repro", "--single-item", "validate"], project, check=False)
    assert r.returncode != 0
    assert "store/test: 1 row has non-finite values (row 3 of part.0.parquet)" in r.stdout + r.stderr
