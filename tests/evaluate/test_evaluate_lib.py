"""Evaluation library: per-class/ontology-corrected metrics, organ systems, ensemble uncertainty, and one
predictor interface over every kind of model folder."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import yaml
from sklearn.metrics import f1_score

from sctab.evaluate.metrics import confusion, evaluate_probs, f1_from_confusion, macro_f1, nll, per_class_f1
from sctab.evaluate.organs import (
    MAPPING_FILE,
    ORGAN_SYSTEMS,
    f1_by_organ,
    organ_map,
    organ_system,
    organ_systems,
    reference_grouping,
)
from sctab.evaluate.uncertainty import calibration, uncertainty, uncertainty_auroc
from sctab.models import ClassifierError, Ensemble


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Small arrays on a busy 2-core machine: one torch and one BLAS thread."""
    import torch
    from threadpoolctl import threadpool_limits

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(1):
        yield
    torch.set_num_threads(n)


# ------------------------------------------------------------------------------------------------ metrics
def _random_case(seed=0, n=400, k=7):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k - 1, n)  # class k-1 never in the truth
    logits = rng.normal(size=(n, k))
    logits[np.arange(n), y] += rng.uniform(0, 3, n)
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return y, probs.astype(np.float32), k


def test_per_class_and_macro_f1_equal_sklearn_without_subtypes():
    y, probs, k = _random_case()
    pred = probs.argmax(1)
    eye = np.eye(k, dtype=np.int64)
    f1, support = per_class_f1(y, pred, eye)
    np.testing.assert_allclose(f1, f1_score(y, pred, labels=np.arange(k), average=None, zero_division=0))
    np.testing.assert_array_equal(support, np.bincount(y, minlength=k))
    assert support.dtype.kind == "i" and f1.dtype == np.float64
    out = evaluate_probs(y, probs, eye)
    assert out["f1_macro"] == pytest.approx(f1_score(y, pred, average="macro"))
    assert out["f1_macro"] == pytest.approx(macro_f1(y, pred, eye))
    assert out["accuracy"] == pytest.approx((pred == y).mean())
    assert out["n_cells"] == len(y) and out["weighted_loss"] is None
    np.testing.assert_allclose(out["per_class_f1"], f1)
    np.testing.assert_array_equal(out["per_class_support"], support)


def test_ontology_rules():
    # 0 = T cell, 1 = CD4-positive T cell (subtype of 0), 2 = B cell
    cm = np.eye(3, dtype=np.int64)
    cm[0, 1] = 1
    y = np.array([0, 1, 0])
    pred = np.array([1, 0, 2])  # subtype of truth: right; parent of truth: wrong; other: wrong
    probs = np.eye(3, dtype=np.float32)[pred]
    out = evaluate_probs(y, probs, cm)
    assert out["accuracy"] == pytest.approx(1 / 3)
    # corrected prediction [0, 0, 2]: class 0 tp=1 fp=1 fn=1 -> 0.5; class 1 fn=1 -> 0; class 2 fp=1 -> 0
    np.testing.assert_allclose(out["per_class_f1"], [0.5, 0.0, 0.0])
    assert out["f1_macro"] == pytest.approx(0.5 / 3)
    f1, support = per_class_f1(y, pred, cm)
    np.testing.assert_allclose(f1, out["per_class_f1"])
    np.testing.assert_array_equal(support, [2, 1, 0])
    # exact and subtype predictions only: all right
    assert evaluate_probs([0, 0, 1], np.eye(3, dtype=np.float32)[[0, 1, 1]], cm)["f1_macro"] == pytest.approx(1.0)
    # the existing helpers agree
    assert f1_from_confusion(confusion(y, np.array([0, 0, 2]), 3))[0] == pytest.approx(out["f1_macro"])


def test_nll_and_weighted_loss_by_hand():
    probs = np.array([[0.5, 0.5], [0.25, 0.75], [1.0, 0.0]])
    y = np.array([0, 1, 1])
    per_cell = [math.log(2), -math.log(0.75), -math.log(1e-12)]  # the last is clipped
    assert nll(y, probs) == pytest.approx(np.mean(per_cell))
    out = evaluate_probs(y, probs, np.eye(2), class_weights=np.array([1.0, 3.0]))
    assert out["nll"] == pytest.approx(np.mean(per_cell))
    assert out["weighted_loss"] == pytest.approx((per_cell[0] + 3 * per_cell[1] + 3 * per_cell[2]) / 7)
    assert math.isnan(nll(np.zeros(0, int), np.zeros((0, 2))))
    with pytest.raises(ValueError, match="shape"):
        nll([0, 1], np.ones((3, 2)))
    with pytest.raises(ValueError, match="class_weights"):
        evaluate_probs(y, probs, np.eye(2), class_weights=np.ones(3))


# ------------------------------------------------------------------------------------------------- organs
def test_organ_system_mapping():
    assert organ_system("blood") == "blood_and_immune"
    assert organ_system("lung") == "lung"
    assert organ_system("colon") == "gut"
    assert organ_system(" Lung ") == "lung"
    assert organ_system("not a tissue") is None
    assert organ_system("embryo") is None  # a census value with no system
    assert set(organ_systems("spleen", "reference")) == {"gut", "blood_and_immune"}
    assert organ_systems("not a tissue", "reference") == ()
    assert len(ORGAN_SYSTEMS) == 15 and len(set(ORGAN_SYSTEMS)) == 15


def test_mapping_file_names_only_known_systems_and_covers_the_census():
    doc = yaml.safe_load(Path(MAPPING_FILE).read_text())
    assert set(doc["primary"].values()) <= set(ORGAN_SYSTEMS)
    assert set(doc["reference"]) == set(ORGAN_SYSTEMS)
    assert organ_map() == {k: v for k, v in doc["primary"].items()}
    assert not set(doc["primary"]) & set(doc["unassigned"])
    # every value the reference grouping uses is mapped (or deliberately left unassigned) in the primary map
    ref_values = {t for ts in reference_grouping().values() for t in ts}
    assert ref_values <= set(doc["primary"]) | set(doc["unassigned"])
    # the synthetic census's tissues (tests and the tiny profile)
    for t in ("blood", "lung", "colon", "liver", "kidney", "brain", "skin of body"):
        assert organ_system(t) in ORGAN_SYSTEMS, t


def test_mapping_covers_the_census_tissue_general_terms():
    pytest.importorskip("cellxgene_ontology_guide")
    from cellxgene_ontology_guide.curated_ontology_term_lists import get_curated_ontology_term_list
    from cellxgene_ontology_guide.entities import CuratedOntologyTermList
    from cellxgene_ontology_guide.ontology_parser import OntologyParser

    parser = OntologyParser()
    labels = [parser.get_term_label(t) for t in get_curated_ontology_term_list(CuratedOntologyTermList.TISSUE_GENERAL)]
    doc = yaml.safe_load(Path(MAPPING_FILE).read_text())
    missing = sorted(set(labels) - set(doc["primary"]) - set(doc["unassigned"]))
    assert not missing, f"census tissue_general values not in conf/organ_systems.yaml: {missing}"


def test_f1_by_organ_two_organs_and_other():
    eye = np.eye(4, dtype=np.int64)
    tissue = np.array(["blood"] * 4 + ["lung"] * 4 + ["mystery"] * 2)
    y = np.array([0, 0, 1, 1, 2, 2, 3, 3, 0, 1])
    pred = np.array([0, 0, 1, 0, 2, 2, 3, 1, 0, 1])
    out = f1_by_organ(y, pred, tissue, eye, average_over="union")
    assert list(out) == ["blood_and_immune", "lung", "other"]
    # blood: class 0 tp2 fp1 -> 0.8; class 1 tp1 fn1 -> 2/3
    assert out["blood_and_immune"]["f1_macro"] == pytest.approx(np.mean([0.8, 2 / 3]))
    assert out["blood_and_immune"]["n_cells"] == 4 and out["blood_and_immune"]["n_types"] == 2
    # lung: class 2 -> 1, class 3 tp1 fn1 -> 2/3, class 1 predicted but absent -> 0 (counted: union rule)
    assert out["lung"]["f1_macro"] == pytest.approx(np.mean([1.0, 2 / 3, 0.0]))
    assert out["lung"]["n_types"] == 3 and out["lung"]["n_cells"] == 4
    assert out["lung"]["f1_macro"] == pytest.approx(f1_score(y[4:8], pred[4:8], average="macro"))
    assert out["other"] == {"f1_macro": 1.0, "n_cells": 2, "n_types": 2, "accuracy": 1.0}
    truth_only = f1_by_organ(y, pred, tissue, eye)  # a subset's default: the classes of its truth
    assert truth_only["lung"]["f1_macro"] == pytest.approx(np.mean([1.0, 2 / 3])) and truth_only["lung"]["n_types"] == 2
    assert truth_only["lung"]["f1_macro"] == pytest.approx(
        f1_score(y[4:8], pred[4:8], labels=np.unique(y[4:8]), average="macro", zero_division=0))
    with pytest.raises(ValueError, match="average_over must be one of"):
        f1_by_organ(y, pred, tissue, eye, average_over="present")
    # no unmapped tissue -> no "other"
    assert "other" not in f1_by_organ(y[:8], pred[:8], tissue[:8], eye)


def test_f1_by_organ_is_ontology_corrected_and_reference_grouping_overlaps():
    cm = np.eye(3, dtype=np.int64)
    cm[0, 1] = 1  # 1 is a subtype of 0
    y = np.array([0, 0, 2, 2])
    pred = np.array([1, 1, 2, 2])  # subtype predictions count as right
    tissue = np.array(["spleen", "spleen", "colon", "colon"])
    primary = f1_by_organ(y, pred, tissue, cm)
    assert primary == {"gut": {"f1_macro": 1.0, "n_cells": 2, "n_types": 1, "accuracy": 1.0},
                       "blood_and_immune": {"f1_macro": 1.0, "n_cells": 2, "n_types": 1, "accuracy": 1.0}}
    ref = f1_by_organ(y, pred, tissue, cm, grouping="reference")
    assert ref["gut"]["n_cells"] == 4 and ref["blood_and_immune"]["n_cells"] == 2
    with pytest.raises(ValueError, match="tissue labels"):
        f1_by_organ(y, pred, tissue[:3], cm)


# -------------------------------------------------------------------------------------------- uncertainty
def test_ensemble_mean_and_uncertainty():
    a = np.array([[0.9, 0.1], [0.2, 0.8]], np.float32)
    b = np.array([[0.5, 0.5], [0.4, 0.6]], np.float32)
    m = Ensemble.mean([a, b])
    np.testing.assert_allclose(m, [[0.7, 0.3], [0.3, 0.7]], atol=1e-6)
    assert m.dtype == np.float32
    np.testing.assert_allclose(uncertainty(m), [0.3, 0.3], atol=1e-6)
    with pytest.raises(ClassifierError):
        Ensemble.mean([a, b[:1]])
    with pytest.raises(ClassifierError):
        Ensemble.mean([])


def test_uncertainty_auroc():
    u = np.array([0.1, 0.2, 0.3, 0.6, 0.7])
    correct = np.array([True, True, True, False, False])
    assert uncertainty_auroc(u, correct) == pytest.approx(1.0)
    assert uncertainty_auroc(-u, correct) == pytest.approx(0.0)
    assert math.isnan(uncertainty_auroc(u, np.ones(5, bool)))
    assert math.isnan(uncertainty_auroc(u, np.zeros(5, bool)))


def test_calibration():
    rng = np.random.default_rng(0)
    # perfectly calibrated: in each bin, the fraction right equals the confidence
    conf = np.repeat([0.55, 0.75, 0.95], 400)
    correct = np.concatenate([rng.permutation(np.arange(400) < int(c * 400)) for c in (0.55, 0.75, 0.95)])
    cal = calibration(conf, correct, n_bins=10)
    assert cal["ece"] == pytest.approx(0.0, abs=1e-9)
    assert sum(b["count"] for b in cal["bins"]) == cal["n"] == len(conf)
    assert len(cal["bins"]) == 10 and cal["bins"][0]["count"] == 0 and cal["bins"][0]["accuracy"] is None
    # overconfident: 99% confidence, half right
    over = calibration(np.full(1000, 0.99), np.arange(1000) % 2 == 0)
    assert over["ece"] == pytest.approx(0.49) and over["mce"] == pytest.approx(0.49)
    assert sum(b["count"] for b in over["bins"]) == 1000
    # confidence 1.0 falls in the last bin
    assert calibration(np.array([1.0]), np.array([True]), n_bins=15)["bins"][-1]["count"] == 1
    with pytest.raises(ValueError):
        calibration(np.array([1.5]), np.array([True]))
