"""Model cards on a real team MLflow server (PostgreSQL behind `mlflow server --app-name basic-auth` on
127.0.0.1): the register stage's library call sets them as registered-model and version descriptions and logs
model_card.md; registering unchanged models again brings the cards up to date; and headless Chromium sees
the card rendered as HTML (headings, a table) in the real MLflow UI, not as raw Markdown."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sctab.data.store import Store
from sctab.registry import register_pipeline_models
from sctab.registry.model_card import ARTIFACT, HEADINGS, read_per_class_f1
from sctab.registry.register import client
from tests.mlflow_server import team_server_running
from tests.model_folders import write_model_folders
from tests.paths import REPO_ROOT as REPO

ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = os.environ.get("SCTAB_CHROMIUM", "/usr/bin/chromium")
pytestmark = [pytest.mark.slow, pytest.mark.needs_root, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def team_server():
    with team_server_running("sctab-mlflow-card-") as server:
        yield server


@pytest.fixture(scope="module")
def registered(team_server, store_dir, obo_file, census_params, tmp_path_factory):
    """sctab-ensemble (2 members) and sctab-linear registered as the register stage does, with reports."""
    mp = pytest.MonkeyPatch()
    for k, v in team_server.client_env().items():
        mp.setenv(k, v)
    tmp = tmp_path_factory.mktemp("card-reg")
    mp.chdir(tmp)
    folders = write_model_folders(tmp / "models", store_dir)
    classes = Store(store_dir).classes
    rng = np.random.default_rng(0)
    csv = tmp / "per_class_f1.csv"
    pd.DataFrame({"cell_type": classes, "train_cells": 100, "f1_sctab": rng.uniform(0.2, 1, len(classes)),
                  "f1_linear": rng.uniform(0.2, 1, len(classes))}).to_csv(csv, index=False)
    metrics = {"sctab": {"test_f1_macro": 0.81, "uncertainty_auroc": 0.8123, "ece": 0.0456},
               "linear": {"test_f1_macro": 0.71}}
    params = {**census_params, "profile": "card-test"}
    kw = {"store": store_dir, "ontology_path": obo_file, "params": params,
          "per_class_f1": read_per_class_f1(csv, classes), "reports_from": {"per_class_f1": str(csv)}}
    versions = register_pipeline_models(folders, metrics=metrics, **kw)
    yield {"versions": versions, "csv": csv, "kw": kw, "folders": folders, "metrics": metrics, "classes": classes}
    mp.undo()


def test_cards_are_the_descriptions_and_the_runs_model_card(registered, team_server, monkeypatch):
    import mlflow

    for k, v in team_server.client_env().items():
        monkeypatch.setenv(k, v)
    assert sorted((v.name, v.version, v.reused) for v in registered["versions"]) == [
        ("sctab-ensemble", "1", False), ("sctab-linear", "1", False)]
    c = client()
    csv = pd.read_csv(registered["csv"])
    for name, folder in (("sctab-ensemble", "sctab"), ("sctab-linear", "linear")):
        mv = c.get_model_version(name, "1")
        card = mv.description
        for h in HEADINGS:
            assert f"\n## {h}\n" in card, (name, h)
        for _, row in csv.iterrows():  # the per-class F1 of this model, not the other's
            assert f"| {row['cell_type']} | " in card and f" | {row[f'f1_{folder}']:.4f} | " in card
        assert "Trained on a synthetic test bed, not biology" in card and "| profile | card-test |" in card
        assert f"`{mv.run_id}`" in card
        path = mlflow.artifacts.download_artifacts(run_id=mv.run_id, artifact_path=ARTIFACT)
        assert Path(path).read_text() == card
        model_desc = c.get_registered_model(name).description
        assert model_desc == f"*The card of version 1, the newest registered.*\n\n{card}"
    ens = c.get_model_version("sctab-ensemble", "1").description
    assert "AUROC **0.812**" in ens and "(ECE) **0.046**" in ens and "(2 members)" in ens
    floor = float(c.get_model_version("sctab-ensemble", "1").tags["min_probability"])
    assert f"**{floor:.4f}**" in ens
    lin = c.get_model_version("sctab-linear", "1").description
    assert "Not an ensemble" in lin and "AUROC **" not in lin


def test_unchanged_models_get_their_cards_refreshed(registered, team_server, monkeypatch):
    for k, v in team_server.client_env().items():
        monkeypatch.setenv(k, v)
    metrics = {**registered["metrics"], "sctab": {**registered["metrics"]["sctab"], "ece": 0.0111}}
    again = register_pipeline_models(registered["folders"], metrics=metrics, **registered["kw"])
    assert all(v.reused and v.version == "1" for v in again)
    c = client()
    assert "(ECE) **0.011**" in c.get_model_version("sctab-ensemble", "1").description
    assert "(ECE) **0.011**" in c.get_registered_model("sctab-ensemble").description
    assert len(c.search_model_versions("name = 'sctab-ensemble'")) == 1


def test_the_card_renders_in_the_mlflow_ui(registered, team_server):
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "mlflow-ui-model-card.png"
    timeout = 60_000
    creds = {"username": team_server.admin_user, "password": team_server.admin_password}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 950}, http_credentials=creds)
            for url, name in ((f"{team_server.url}/#/models/sctab-ensemble", "model"),
                              (f"{team_server.url}/#/models/sctab-ensemble/versions/1", "version")):
                page.goto(url, wait_until="domcontentloaded")
                page.locator("h2", has_text="Training data").first.wait_for(timeout=timeout)
                headings = page.locator("h2").all_inner_texts()
                assert {"Training data", "Classes", "Known limits", "How to cite"} <= set(headings), (name, headings)
                assert page.locator("table").count() >= 2, name  # training data and classes, as HTML tables
                cells = page.locator("td").all_inner_texts()
                assert set(registered["classes"]) <= set(cells), name  # every class is a row of the HTML table
                body = page.inner_text("body")
                assert "## Training data" not in body and "|---|" not in body, name
                assert "Trained on a synthetic test bed, not biology" in body
                if name == "model":
                    page.locator("h2", has_text="Training data").first.scroll_into_view_if_needed()
                    page.screenshot(path=shot, full_page=True)
        finally:
            browser.close()
    assert shot.stat().st_size > 20_000
