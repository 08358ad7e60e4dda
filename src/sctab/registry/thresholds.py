"""The default minimum probability of a registered version, chosen on its store's validation split.

CellTypist leaves the probability threshold to the user (``p_thres``, 0.5 by default); a number that suits
one model may not suit another, so each registered version carries its own. The rule: with the model's
top probability ``p`` per validation cell, a threshold ``t`` assigns the cells with ``p >= t`` and leaves
the others "Unassigned"; its precision is the fraction of assigned cells predicted correctly (by the
project's evaluation rule: the true type or one of its ontology children, docs/evaluation-rules.md). The
default is the smallest ``t`` whose precision is at least the target (``registry.min_probability_precision``,
0.95). When even the whole split meets the target the default is 0 (nothing left unassigned); when no ``t``
meets it, the default is 0 as well and the record says the target was not reached, since a threshold that
unassigns nearly every cell helps no one. The test split is not used: it stays the untouched estimate.
"""

from __future__ import annotations

import numpy as np

from sctab.data.store import Store
from sctab.evaluate.metrics import correct_predictions
from sctab.evaluate.predict import check_fits_store
from sctab.models import Classifier
from sctab.params_schema import RegistryParams

DEFAULT_PRECISION = RegistryParams.min_probability_precision  # the schema's registry defaults
DEFAULT_MAX_CELLS = RegistryParams.threshold_max_cells
RULE = ("smallest t such that the precision of validation cells with top probability >= t is >= the target "
        "(0 when all cells already meet it or no t does)")


def precision_threshold(pmax: np.ndarray, correct: np.ndarray, target: float) -> dict:
    """The rule above on (top probability, correct?) pairs; a dict with the value and how it was reached."""
    if not 0.0 < target <= 1.0:
        raise ValueError(f"the target precision must be in (0, 1], got {target}")
    pmax = np.asarray(pmax, dtype=np.float64)
    correct = np.asarray(correct, dtype=bool)
    n = len(pmax)
    base = {"precision_target": float(target), "rule": RULE, "n_cells": int(n)}
    if n == 0:
        return {**base, "value": 0.0, "reached": False, "precision": None, "assigned_fraction": None}
    order = np.argsort(-pmax, kind="stable")
    p, c = pmax[order], correct[order]
    precision = np.cumsum(c) / np.arange(1, n + 1)  # precision when the first k cells (highest p) are assigned
    ends = np.flatnonzero(np.r_[p[1:] != p[:-1], True])  # last index of each run of equal p: t = p[end]
    if precision[-1] >= target:
        return {**base, "value": 0.0, "reached": True, "precision": float(precision[-1]), "assigned_fraction": 1.0}
    ok = ends[precision[ends] >= target]
    if not len(ok):
        return {**base, "value": 0.0, "reached": False, "precision": float(precision[-1]),
                "best_precision": float(precision[ends].max()), "assigned_fraction": 1.0}
    k = int(ok.max())  # the most cells assigned = the smallest threshold
    return {**base, "value": float(p[k]), "reached": True, "precision": float(precision[k]),
            "assigned_fraction": float((k + 1) / n)}


def _sample_row_groups(store: Store, split: str, max_cells: int) -> list[tuple]:
    """Evenly spread row groups holding about ``max_cells`` cells (all of them for a small split)."""
    groups = store.split(split).row_groups
    total = sum(g[2] for g in groups)
    if total <= max_cells or not groups:
        return groups
    k = max(1, int(np.ceil(len(groups) * max_cells / total)))
    return [groups[i] for i in np.unique(np.linspace(0, len(groups) - 1, k).round().astype(int))]


def validation_threshold(clf: Classifier, store: str | Store, *, precision: float = DEFAULT_PRECISION,
                         max_cells: int = DEFAULT_MAX_CELLS) -> dict:
    """The default minimum probability of ``clf`` on the validation split of ``store`` (at most ``max_cells``
    cells, in evenly spread row groups)."""
    store = store if isinstance(store, Store) else Store(store)
    check_fits_store(clf, store)
    ys, ps = [], []
    for path, i, _ in _sample_row_groups(store, "val", int(max_cells)):
        g = store.read_row_group(path, i, ("X", "cell_type"))
        ys.append(np.asarray(g["cell_type"], dtype=np.int64))
        ps.append(clf.predict_proba(g["X"]))
    if not ys:
        return {**precision_threshold(np.zeros(0), np.zeros(0, bool), precision), "split": "val"}
    y, probs = np.concatenate(ys), np.concatenate(ps)
    pred = probs.argmax(axis=1)
    correct = correct_predictions(y, pred, store.child_matrix()) == y
    return {**precision_threshold(probs.max(axis=1), correct, precision), "split": "val"}
