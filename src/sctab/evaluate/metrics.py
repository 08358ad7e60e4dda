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


def per_class_f1(y_true, y_pred, child_matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ontology-corrected F1 of every class (0 where a class is absent from truth and prediction) and its
    support (cells of that class in the truth)."""
    child_matrix = np.asarray(child_matrix)
    pred = correct_predictions(y_true, y_pred, child_matrix)
    _, f1, support = f1_from_confusion(confusion(y_true, pred, child_matrix.shape[0]))
    return f1, support


def _check_probs(y_true, probs, n_classes: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    y_true = np.asarray(y_true).astype(np.int64, copy=False).ravel()
    probs = np.asarray(probs)
    if probs.ndim != 2 or probs.shape[0] != y_true.size:
        raise ValueError(f"probs has shape {probs.shape}; expected ({y_true.size}, n_classes) for {y_true.size} labels")
    if n_classes is not None and probs.shape[1] != n_classes:
        raise ValueError(f"probs has {probs.shape[1]} columns but there are {n_classes} classes")
    if y_true.size and (y_true.min() < 0 or y_true.max() >= probs.shape[1]):
        raise ValueError(f"y_true holds class codes outside [0, {probs.shape[1]})")
    return y_true, probs


def _nll_per_cell(y_true: np.ndarray, probs: np.ndarray) -> np.ndarray:
    p = probs[np.arange(y_true.size), y_true].astype(np.float64)
    return -np.log(np.clip(p, 1e-12, None))


def nll(y_true, probs) -> float:
    """Mean negative log-likelihood of the true class (unweighted; probabilities clipped at 1e-12).
    NaN for no cells."""
    y_true, probs = _check_probs(y_true, probs)
    return float(_nll_per_cell(y_true, probs).mean()) if y_true.size else float("nan")


def evaluate_probs(y_true, probs, child_matrix: np.ndarray, class_weights: np.ndarray | None = None) -> dict:
    """Scores of class probabilities (prediction = argmax, ontology-corrected).

    Keys: ``f1_macro`` (over classes present in truth or corrected prediction), ``accuracy``
    (ontology-corrected), ``nll`` (unweighted mean), ``weighted_loss`` (cross entropy weighted by
    ``class_weights[y]`` and normalised by their sum, as torch's weighted CrossEntropyLoss; None without
    weights), ``n_cells``, ``per_class_f1`` (float array, n_classes) and ``per_class_support`` (int array).
    Empty input gives f1_macro 0.0 and NaN accuracy/nll/weighted_loss.
    """
    child_matrix = np.asarray(child_matrix)
    n_classes = child_matrix.shape[0]
    y_true, probs = _check_probs(y_true, probs, n_classes)
    pred = correct_predictions(y_true, probs.argmax(axis=1) if y_true.size else y_true, child_matrix)
    macro, f1, support = f1_from_confusion(confusion(y_true, pred, n_classes))
    n = int(y_true.size)
    per_cell = _nll_per_cell(y_true, probs)
    out = {"f1_macro": macro, "accuracy": float((pred == y_true).mean()) if n else float("nan"),
           "nll": float(per_cell.mean()) if n else float("nan"), "weighted_loss": None, "n_cells": n,
           "per_class_f1": f1, "per_class_support": support}
    if class_weights is not None:
        w = np.asarray(class_weights, dtype=np.float64).ravel()
        if w.shape != (n_classes,):
            raise ValueError(f"class_weights has shape {w.shape}, expected ({n_classes},)")
        wy = w[y_true]
        out["weighted_loss"] = float((wy * per_cell).sum() / wy.sum()) if n and wy.sum() > 0 else float("nan")
    return out
