"""Ontology-corrected macro F1: the paper's three rules, and sklearn's value when no label has a subtype."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import f1_score

from sctab.evaluate.metrics import confusion, correct_predictions, f1_from_confusion, macro_f1

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
