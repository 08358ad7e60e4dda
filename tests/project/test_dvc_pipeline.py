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

from tests.dvc_project import run as _run
from tests.paths import REPO_ROOT as REPO
from tests.ray_cluster import free_port, kill_group

pytestmark = pytest.mark.slow


def test_repro_twice_status_clean_and_push(project):
    r = _run(["dvc", "repro"], project)
    assert "all checks passed" in r.stdout
    for out in ("data/census/soma", "data/extract/obs.parquet", "data/split/assignment.parquet",
                "data/store/train/part.0.parquet", "reports/validation/summary.json",
                "reports/validation/data_docs/index.html", "data/augment/augmentations.npy",
                "models/linear/model.pt", "models/mlp/model.pt", "models/sctab/seed_0/model.pt",
                "models/sctab/seed_1/model.pt", "models/sctab/ensemble.json", "data/pca/pca.npz",
                "models/xgboost/model.ubj", "models/celltypist/model.pkl", "reports/registry/registered.json"):
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


# ------------------------------------------------------------------ registry, annotation, serving, UI
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = os.environ.get("SCTAB_CHROMIUM", "/usr/bin/chromium")


def _venv_args() -> list[str]:
    """Make variables that use the running venv as is: its install stamp counts as up to date, so a pyproject.toml
    newer than the stamp never re-installs the project from the throw-away clone into this venv."""
    venv = Path(sys.executable).parents[1]
    return [f"VENV={venv}", "-o", f"{venv}/.installed"]


def _make(target: str, project: Path, **variables) -> subprocess.Popen:
    """A long-running `make <target>` of the project (its own process group, stopped by kill_group)."""
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    args = ["make", "-s", "-C", str(project), target, *_venv_args(),
            *(f"{k}={v}" for k, v in variables.items())]
    log = open(project / f"{target}.log", "w")
    return subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float = 180.0) -> None:
    import time
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(1.0)
    raise AssertionError(f"{url} did not answer within {timeout:.0f} s:\n{log.read_text()[-3000:]}")


@pytest.mark.timeout(1500)
@pytest.mark.needs_root  # Debian's Chromium for the UI (`make browser`)
def test_promote_annotate_serve_and_ui(project, tmp_path):
    """The issue's "done when": after `dvc repro`, promote, annotate a real h5ad, serve it, look at the UI."""
    import anndata
    import requests

    from tests.model_folders import write_pbmc_h5ad

    if not (project / "reports/registry/registered.json").exists():
        _run(["dvc", "repro"], project)
    registered = json.loads((project / "reports/registry/registered.json").read_text())["models"]
    assert {m["name"] for m in registered} == {"sctab-ensemble", "sctab-linear", "sctab-mlp", "sctab-xgboost",
                                               "sctab-celltypist"}
    env_clean = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    r = subprocess.run(["make", "-s", "-C", str(project), "promote", *_venv_args()], capture_output=True, text=True,
                       env=env_clean, timeout=300)
    assert r.returncode == 0 and "promoted: no champion yet" in r.stdout, r.stdout + r.stderr

    pbmc = write_pbmc_h5ad(tmp_path / "pbmc.h5ad")
    out = tmp_path / "pbmc.annotated.h5ad"
    r = subprocess.run(["make", "-s", "-C", str(project), "annotate", *_venv_args(), f"INPUT={pbmc}",
                        f"OUTPUT={out}"],
                       capture_output=True, text=True, env=env_clean, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "559 cells annotated with models:/sctab-ensemble@champion" in r.stdout
    annotated = anndata.read_h5ad(out)
    obs = annotated.obs
    # below the model's default minimum probability (recorded at registration) a cell is 'Unassigned', no id
    floor = annotated.uns["sctab_annotation"]["min_probability"]
    unassigned = (obs["sctab_label"] == "Unassigned").to_numpy()
    assert (unassigned == (obs["sctab_probability"] < floor).to_numpy()).all()
    assert obs.loc[~unassigned, "sctab_cell_type_ontology_term_id"].str.startswith("CL:").all()
    assert obs["sctab_coarse_ontology_term_id"].str.startswith("CL:").all()

    port = free_port()
    server = _make("serve", project, SERVE_PORT=port)
    try:
        _wait_http(f"http://127.0.0.1:{port}/ping", server, project / "serve.log")
        from sctab.census.counts import match_genes

        genes = __import__("pandas").read_parquet(project / "models/sctab/seed_0/var.parquet")["feature_id"].tolist()
        match = match_genes(annotated.var, genes)
        present = [(g, c) for g, c in zip(genes, match.columns) if c >= 0]
        counts = annotated.X[:60][:, [c for _, c in present]].toarray().astype(int)
        body = {"dataframe_split": {"columns": [g for g, _ in present], "data": counts.tolist()}}
        resp = requests.post(f"http://127.0.0.1:{port}/invocations", json=body, timeout=120)
        assert resp.status_code == 200, resp.text[:2000]
        served = [row["label"] for row in resp.json()["predictions"]]
        assert served == annotated.obs["sctab_label"].iloc[:60].tolist()
    finally:
        kill_group(server)

    port = free_port()
    ui = _make("ui", project, UI_PORT=port)
    try:
        _wait_http(f"http://127.0.0.1:{port}/", ui, project / "ui.log")
        _browse(f"http://127.0.0.1:{port}", project)
    finally:
        kill_group(ui)


def _browse(base: str, project: Path) -> None:
    """Headless Chromium over the MLflow UI: runs, a metric curve, the registered ensemble, its aliases and its
    model card."""
    from mlflow.tracking import MlflowClient
    from playwright.sync_api import sync_playwright

    client = MlflowClient(f"sqlite:///{project}/mlruns/mlflow.db")
    exp = client.get_experiment_by_name("train").experiment_id
    run = client.search_runs([exp], filter_string="attributes.run_name = 'sctab-seed0'")[0].info.run_id
    ARTIFACTS.mkdir(exist_ok=True)
    timeout = 60_000
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 950})
            page.goto(f"{base}/#/experiments/{exp}/runs", wait_until="domcontentloaded")
            for name in ("linear-seed0", "mlp-seed0", "sctab-ensemble", "xgboost", "celltypist"):
                page.get_by_text(name, exact=False).first.wait_for(timeout=timeout)
            page.screenshot(path=ARTIFACTS / "mlflow-ui-runs.png")

            page.goto(f"{base}/#/experiments/{exp}/runs/{run}/model-metrics", wait_until="domcontentloaded")
            search = page.get_by_placeholder("Search metric charts")
            search.wait_for(timeout=timeout)
            search.fill("val_")  # charts render only when in view: bring the validation curves to the top
            page.get_by_text("val_f1_macro", exact=True).first.wait_for(timeout=timeout)
            page.locator(".js-plotly-plot").first.wait_for(timeout=timeout)
            assert page.locator(".js-plotly-plot").count() >= 3
            page.screenshot(path=ARTIFACTS / "mlflow-ui-metrics.png")

            page.goto(f"{base}/#/models", wait_until="domcontentloaded")
            page.get_by_text("sctab-ensemble").first.wait_for(timeout=timeout)
            page.get_by_text("champion").first.wait_for(timeout=timeout)
            page.goto(f"{base}/#/models/sctab-ensemble", wait_until="domcontentloaded")
            page.get_by_text("challenger").first.wait_for(timeout=timeout)
            # the model card (the registered model's description) rendered as HTML, not raw Markdown
            page.locator("h2", has_text="Training data").first.wait_for(timeout=timeout)
            assert {"Classes", "Uncertainty calibration", "How to cite"} <= set(page.locator("h2").all_inner_texts())
            assert page.locator("table").count() >= 2
            body = page.inner_text("body")
            assert "champion" in body and "test_f1_macro" in body and "data_version" in body
            assert "## Training data" not in body and "Trained on a synthetic test bed" in body
            page.screenshot(path=ARTIFACTS / "mlflow-ui-registered-model.png", full_page=True)
        finally:
            browser.close()
    for shot in ("runs", "metrics", "registered-model"):
        assert (ARTIFACTS / f"mlflow-ui-{shot}.png").stat().st_size > 20_000


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
