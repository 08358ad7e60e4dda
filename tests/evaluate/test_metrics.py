"""Ontology-corrected macro F1: the paper's three rules, sklearn's value when no label has a subtype, and the
two averaging rules (whole split: union of truth and prediction; a subset: its truth)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import f1_score

from sctab.evaluate.metrics import (
    confusion,
    correct_predictions,
    evaluate_probs,
    f1_from_confusion,
    macro_f1,
    split_scores,
)

# 0 = T cell, 1 = CD4 T cell (subtype of 0), 2 = B cell
CHILD = np.array([[1, 1, 0],
                  [0, 1, 0],
                  [0, 0, 1]])


def test_subtype_prediction_counts_as_right():
    assert correct_predictions([0], [1], CHILD).tolist() == [0]


def test_parent_prediction_counts_as_wrong():
    assert correct_predictions([1], [0], CHILD).tolist() == [0]  # stays the (wrong) parent


def test_unrelated_prediction_is_wrong():
    assert correct_predictions([2], [1], CHILD).tolist() == [1]


def test_equals_sklearn_without_subtypes():
    rng = np.random.default_rng(0)
    y, p = rng.integers(0, 7, 500), rng.integers(0, 7, 500)
    ours = macro_f1(y, p, np.eye(7, dtype=int))
    assert ours == pytest.approx(f1_score(y, p, average="macro"), abs=1e-12)


def test_hand_computed_macro_f1():
    y = np.array([0, 0, 1, 1, 2, 2])
    p = np.array([1, 0, 0, 1, 2, 1])  # subtype right, right, parent wrong, right, right, unrelated wrong
    corrected = correct_predictions(y, p, CHILD)
    assert corrected.tolist() == [0, 0, 0, 1, 2, 1]
    assert macro_f1(y, p, CHILD) == pytest.approx(f1_score(y, corrected, average="macro"))
    assert macro_f1(y, p, CHILD) > f1_score(y, p, average="macro")


def test_confusions_add_up_across_shards():
    rng = np.random.default_rng(1)
    y, p = rng.integers(0, 5, 300), rng.integers(0, 5, 300)
    whole = confusion(y, p, 5)
    parts = confusion(y[:100], p[:100], 5) + confusion(y[100:], p[100:], 5)
    assert (whole == parts).all()
    assert f1_from_confusion(whole)[0] == pytest.approx(f1_score(y, p, average="macro"))


def test_bad_codes_are_named():
    with pytest.raises(ValueError, match="y_pred holds class codes outside"):
        correct_predictions([0], [5], CHILD)
    with pytest.raises(ValueError, match="3 labels but y_pred 2"):
        macro_f1([0, 1, 2], [0, 1], CHILD)


def test_union_and_truth_rules_differ_where_a_type_is_only_predicted():
    # a "lung" subset: truth has types 0 and 1; the model also predicts type 2 (not in this subset's truth)
    y = np.array([0, 0, 1, 1])
    p = np.array([0, 2, 1, 1])
    eye = np.eye(3, dtype=int)
    union = macro_f1(y, p, eye, average_over="union")
    truth = macro_f1(y, p, eye, average_over="truth")
    assert union == pytest.approx(np.mean([2 / 3, 1.0, 0.0]))  # type 2 averaged in with F1 0
    assert truth == pytest.approx(np.mean([2 / 3, 1.0]))  # type 0 still loses its recall
    assert union == pytest.approx(f1_score(y, p, average="macro"))
    assert truth == pytest.approx(f1_score(y, p, labels=np.unique(y), average="macro", zero_division=0))
    with pytest.raises(ValueError, match="average_over must be one of"):
        macro_f1(y, p, eye, average_over="present")


@pytest.mark.parametrize("seed", range(5))
def test_both_rules_match_sklearn_on_random_data(seed):
    rng = np.random.default_rng(seed)
    k = 12
    # truth on a few types, predictions over all: many types are only predicted, some only true
    y = rng.choice(rng.choice(k, 6, replace=False), 200)
    p = np.where(rng.random(200) < 0.5, y, rng.integers(0, k, 200))
    eye = np.eye(k, dtype=int)
    cm = confusion(y, p, k)
    union = f1_from_confusion(cm, average_over="union")[0]
    truth = f1_from_confusion(cm, average_over="truth")[0]
    assert union == pytest.approx(f1_score(y, p, average="macro"), abs=1e-12)
    assert truth == pytest.approx(f1_score(y, p, labels=np.unique(y), average="macro", zero_division=0), abs=1e-12)
    assert truth > union  # the only-predicted types pull the union average down
    probs = rng.random((200, k)) * 0.1
    probs[np.arange(200), p] = 1.0
    probs /= probs.sum(1, keepdims=True)
    for rule, want in (("union", union), ("truth", truth)):
        out = evaluate_probs(y, probs, eye, average_over=rule)
        assert out["f1_macro"] == pytest.approx(want) and out["average_over"] == rule
        assert out["n_types"] == (len(np.union1d(y, p)) if rule == "union" else len(np.unique(y)))


def test_split_scores_with_ontology_correction_and_weights():
    y = np.array([0, 0, 1, 1, 2, 2])
    pred = np.array([1, 0, 0, 1, 2, 1])  # subtype right, right, parent wrong, right, right, unrelated wrong
    probs = np.full((6, 3), 0.1)
    probs[np.arange(6), pred] = 0.8
    w = np.array([1.0, 2.0, 3.0])
    corrected = correct_predictions(y, pred, CHILD)
    s = split_scores(y, probs, CHILD, w, average_over="truth")
    assert s["f1_macro"] == pytest.approx(f1_score(y, corrected, labels=np.unique(y), average="macro"))
    assert s["accuracy"] == pytest.approx(4 / 6) and s["rows"] == 6
    nll = -np.log(probs[np.arange(6), y])
    assert s["loss"] == pytest.approx((w[y] * nll).sum() / w[y].sum())
    # the lung-like subset of the same cells: only types 0 and 2 in truth, so the rules part ways
    sub = np.array([0, 1, 4, 5])
    assert f1_score(y[sub], corrected[sub], average="macro") != f1_score(y[sub], corrected[sub], labels=[0, 2],
                                                                         average="macro")
    assert split_scores(y[sub], probs[sub], CHILD, w, average_over="union")["f1_macro"] == pytest.approx(
        f1_score(y[sub], corrected[sub], average="macro"))
    assert split_scores(y[sub], probs[sub], CHILD, w, average_over="truth")["f1_macro"] == pytest.approx(
        f1_score(y[sub], corrected[sub], labels=[0, 2], average="macro"))
