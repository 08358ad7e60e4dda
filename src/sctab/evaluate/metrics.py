"""Ontology-corrected classification metrics (paper, Methods: "Ontology-corrected cell type classification").

A prediction is right when it equals the true label or is a subtype of it (the author annotated more
coarsely than the model predicts); a parent of the true label, or anything else, is wrong. The rule is
applied by rewriting such predictions to the true label, after which the usual macro F1 applies.

``child_matrix[i, j] == 1`` when class j is class i or a subtype of it (the store's
``cell_type_hierarchy/child_matrix.npy``).
"""

from __future__ import annotations

import numpy as np


def _check(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    y_true = np.asarray(y_true).astype(np.int64, copy=False).ravel()
    y_pred = np.asarray(y_pred).astype(np.int64, copy=False).ravel()
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true has {y_true.size} labels but y_pred {y_pred.size}")
    for name, y in (("y_true", y_true), ("y_pred", y_pred)):
        if y.size and (y.min() < 0 or y.max() >= n_classes):
            raise ValueError(f"{name} holds class codes outside [0, {n_classes})")
    return y_true, y_pred


def correct_predictions(y_true, y_pred, child_matrix: np.ndarray) -> np.ndarray:
    """Predictions with every subtype-of-the-truth prediction replaced by the true label."""
    child_matrix = np.asarray(child_matrix)
    y_true, y_pred = _check(y_true, y_pred, child_matrix.shape[0])
    ok = child_matrix[y_true, y_pred].astype(bool)
    return np.where(ok, y_true, y_pred)


def confusion(y_true, y_pred, n_classes: int) -> np.ndarray:
    """Counts (n_classes x n_classes): rows truth, columns prediction. Sums across workers add up."""
    y_true, y_pred = _check(y_true, y_pred, n_classes)
    return np.bincount(y_true * n_classes + y_pred, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def f1_from_confusion(cm: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Macro F1 over the classes present in truth or prediction (sklearn's convention), per-class F1, support."""
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    fp = cm.sum(axis=0) - tp
    fn = cm.sum(axis=1) - tp
    denom = 2 * tp + fp + fn
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    present = denom > 0
    macro = float(f1[present].mean()) if present.any() else 0.0
    return macro, f1, cm.sum(axis=1).astype(np.int64)


def macro_f1(y_true, y_pred, child_matrix: np.ndarray | None = None, n_classes: int | None = None) -> float:
    """Macro F1; ontology-corrected when a child matrix is given."""
    if child_matrix is not None:
        n_classes = child_matrix.shape[0]
        y_pred = correct_predictions(y_true, y_pred, child_matrix)
    if n_classes is None:
        raise ValueError("give child_matrix or n_classes")
    return f1_from_confusion(confusion(y_true, y_pred, n_classes))[0]
