"""The model card builder: sections, the per-class table against the evaluate report, the synthetic test-bed
and leaky-split limits, missing figures said rather than failing, missing inputs refused, the size limit."""

from __future__ import annotations

import importlib.util
import json
import re

import numpy as np
import pandas as pd
import pytest
import yaml

from sctab.data.split import LEAKY
from sctab.data.store import Store
from sctab.registry.model_card import (
    DESCRIPTION_LIMIT,
    HEADINGS,
    ModelCardError,
    ModelReport,
    TrainingData,
    fitted_card,
    model_card,
    read_per_class_f1,
    training_data,
)
from tests.conftest import pipeline_help
from tests.paths import REPO_ROOT as REPO

CLASSES = ["T cell", "B cell", "natural killer cell", "plasma cell"]
IDS = {"T cell": "CL:0000084", "B cell": "CL:0000236", "natural killer cell": "CL:0000623",
       "plasma cell": "CL:0000786"}
GENES = pd.DataFrame({"feature_id": [f"ENSG{i:011d}" for i in range(12)], "feature_name": [f"G{i}" for i in range(12)]})
DATA = TrainingData(store_version="data/store@0123abcd", cells={"train": 700, "val": 150, "test": 150}, donors=31,
                    organ_systems=["blood", "lung"], test_support={"T cell": 60, "B cell": 40,
                                                                     "natural killer cell": 30, "plasma cell": 20})
FLOOR = {"value": 0.4321, "precision_target": 0.95, "reached": True, "precision": 0.9512, "assigned_fraction": 0.8,
         "n_cells": 150, "split": "val"}
EMBEDDED = {"profile": "tiny", "census": {"source": "embedded"}, "split": {"by": "donor"},
            "genes": {"biotype": "protein_coding"}}
CENSUS = {"profile": "census-2023-05-15", "census": {"source": "cellxgene", "version": "2023-05-15"},
          "split": {"by": "donor"}}


@pytest.fixture
def per_class_csv(tmp_path):
    """A per_class_f1.csv as the evaluate stage writes it (cell_type, train_cells, f1_<model>...)."""
    rng = np.random.default_rng(3)
    path = tmp_path / "per_class_f1.csv"
    pd.DataFrame({"cell_type": CLASSES, "train_cells": [500, 300, 200, 100], "f1_sctab": rng.uniform(0.3, 1.0, 4),
                  "f1_linear": rng.uniform(0.3, 1.0, 4)}).to_csv(path, index=False)
    return path


def _card(params=EMBEDDED, name="sctab-ensemble", members=5, report=None, **kw):
    args = {"kind": "sctab-ensemble" if members > 1 else "linear", "members": members, "classes": CLASSES,
            "class_ids": IDS, "genes": GENES, "params": params, "data": DATA, "report": report,
            "min_probability": FLOOR, "git_commit": "0123456789abcdef"}
    return model_card(name, **{**args, **kw})


def _table(card: str) -> dict[str, tuple[str, str, int]]:
    """cell type -> (ontology id, F1 text, support or None) from the card's class table."""
    rows = re.findall(r"^\| (.+?) \| (CL:\d+) \| ([\d.]+|n/a) \| ([\d,]+|n/a) \|$", card, flags=re.M)
    return {c: (i, f, None if s == "n/a" else int(s.replace(",", ""))) for c, i, f, s in rows}


def test_sections_and_per_class_numbers_equal_the_report(per_class_csv):
    f1 = read_per_class_f1(per_class_csv, classes=CLASSES)
    assert set(f1) == {"sctab", "linear"}
    report = ModelReport(metrics={"test_f1_macro": 0.861234, "uncertainty_auroc": 0.8486, "ece": 0.0282},
                         per_class_f1=f1["sctab"], sources={"per_class_f1": "reports/evaluate/plots/per_class_f1.csv"})
    card = _card(report=report)
    headings = re.findall(r"^## (.+)$", card, flags=re.M)
    assert headings == list(HEADINGS)
    table = _table(card)
    csv = pd.read_csv(per_class_csv)
    assert list(table) == CLASSES
    for _, row in csv.iterrows():
        oid, f, support = table[row["cell_type"]]
        assert oid == IDS[row["cell_type"]] and f == f"{row['f1_sctab']:.4f}"
        assert support == DATA.test_support[row["cell_type"]]
    assert "**0.8612**" in card  # test macro F1
    assert "AUROC **0.849**" in card and "(ECE) **0.028**" in card
    assert "**0.4321**" in card and "precision >= 0.95" in card and "80% of 150" in card
    assert "| cells (train / val / test) | 700 / 150 / 150 |" in card and "| donors | 31 |" in card
    assert "| organ systems (2) | blood, lung |" in card and "`data/store@0123abcd`" in card
    assert "12 genes (protein-coding)" in card and "G0 (`ENSG00000000000`)" in card and "4 more" in card
    assert "Scaling cross-tissue single-cell annotation models" in card and "Theis, F. J." in card
    # the linear baseline: its own F1 column, and no calibration figures
    base = _card(name="sctab-linear", members=1, report=ModelReport(metrics={"test_f1_macro": 0.7},
                                                                    per_class_f1=f1["linear"]))
    assert {c: f for c, (_, f, _) in _table(base).items()} == {c: f"{v:.4f}" for c, v in f1["linear"].items()}
    assert "Not an ensemble" in base and "AUROC **" not in base and "ECE" not in base


def test_synthetic_test_bed_and_leaky_split_limits():
    embedded = _card(EMBEDDED)
    assert "Trained on a synthetic test bed, not biology" in embedded
    assert embedded.index("synthetic test bed") < embedded.index("## Training data")  # said before any figure
    real = _card(CENSUS)
    assert "synthetic" not in real.lower() and "| source | cellxgene (census 2023-05-15) |" in real
    assert "leaky" not in real.lower() and "held-out donors" in real
    leaky = _card({**CENSUS, "split": {"by": "cell"}})
    assert "by cell (**leaky**)" in leaky and f"Leaky split: {LEAKY}" in leaky


def test_missing_figures_are_said_and_missing_inputs_refused():
    card = _card(report=None, min_probability=None, data=None)
    assert "not available" in card.lower() and "no evaluate metrics" in card
    assert "Not available: the evaluate report has no uncertainty AUROC" in card
    assert "Per-class test F1 not available" in card and "registered without a store" in card
    assert len(_table(card)) == 4 and all(f == "n/a" and s is None for _, f, s in _table(card).values())
    with pytest.raises(ModelCardError, match="no profile"):
        _card(params={"census": {"source": "embedded"}})
    with pytest.raises(ModelCardError, match="no classes"):
        _card(classes=[])
    with pytest.raises(ModelCardError, match="no genes"):
        _card(genes=GENES.iloc[:0])


def test_a_long_class_list_fits_the_description_limit():
    classes = [f"type {i:03d}" for i in range(300)]
    ids = {c: f"CL:{i:07d}" for i, c in enumerate(classes)}
    f1 = {c: (i % 97) / 100 for i, c in enumerate(classes)}
    data = TrainingData("data/store@x", {"train": 1, "val": 1, "test": 1}, 1, ["lung"], dict.fromkeys(classes, 5))
    kw = {"kind": "sctab-ensemble", "members": 5, "classes": classes, "class_ids": ids, "genes": GENES,
          "params": CENSUS, "data": data, "report": ModelReport(per_class_f1=f1), "min_probability": FLOOR}
    full = model_card("big", **kw)
    assert len(full) > DESCRIPTION_LIMIT and len(_table(full)) == 300
    short = fitted_card("big", **kw)
    assert len(short) <= DESCRIPTION_LIMIT and "## How to cite" in short and "lowest test F1" in short
    shown = _table(short)
    assert 0 < len(shown) < 300 and max(float(f) for _, f, _ in shown.values()) <= min(
        sorted(f1.values())[len(shown):])  # the worst classes are the ones shown


def test_training_data_and_per_class_report_from_a_store(store_dir, tmp_path):
    store = Store(store_dir)
    data = training_data(store, "data/store@x")
    test = store.read_obs("test")["cell_type"].to_numpy()
    assert data.cells == {s: len(store.read_obs(s)) for s in ("train", "val", "test")}
    assert list(data.test_support.values()) == np.bincount(test, minlength=store.n_classes).tolist()
    assert data.donors and data.donors >= 3 and data.organ_systems
    bad = tmp_path / "other.csv"
    pd.DataFrame({"cell_type": ["not a class"], "f1_sctab": [0.5]}).to_csv(bad, index=False)
    with pytest.raises(ModelCardError, match="re-run the evaluate stage"):
        read_per_class_f1(bad, classes=store.classes)
    assert read_per_class_f1(tmp_path / "absent.csv") == {}


def _register_stage():
    spec = importlib.util.spec_from_file_location("register_stage", REPO / "pipelines" / "register.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.main


def test_bad_card_inputs_stop_the_register_stage_with_nothing_registered(store_dir, obo_file, census_params,
                                                                         tracking, tmp_path, capsys):
    from sctab.registry import RegistryError, register_pipeline_models
    from sctab.registry.register import client
    from tests.model_folders import write_model_folders

    models = write_model_folders(tmp_path / "models", store_dir)
    with pytest.raises(RegistryError, match="nothing registered: the params name no profile"):
        register_pipeline_models(models, store=store_dir, ontology_path=obo_file, metrics={},
                                 params={k: v for k, v in census_params.items() if k != "profile"})
    # a per-class report of another store: the stage says so (exit 2) before registering anything
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({**census_params, "profile": "card-test"}))
    (tmp_path / "metrics.json").write_text(json.dumps({"models": {"sctab": {"test_f1_macro": 0.5}}}))
    pd.DataFrame({"cell_type": ["not a class"], "f1_sctab": [0.5]}).to_csv(tmp_path / "pc.csv", index=False)
    args = ["--params", str(tmp_path / "params.yaml"), "--models", str(models), "--store", str(store_dir),
            "--ontology", str(obo_file), "--metrics", str(tmp_path / "metrics.json"), "--per-class",
            str(tmp_path / "pc.csv"), "--out", str(tmp_path / "registered.json")]
    assert _register_stage()(args) == 2
    assert "re-run the evaluate stage" in capsys.readouterr().err
    assert client().search_registered_models() == [] and not (tmp_path / "registered.json").exists()
    assert "model_card.md" in pipeline_help("register")
