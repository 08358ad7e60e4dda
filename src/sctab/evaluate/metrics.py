"""Ontology-corrected classification metrics (paper, Methods: "Ontology-corrected cell type classification").

A prediction is right when it equals the true label or is a subtype of it (the author annotated more
coarsely than the model predicts); a parent of the true label, or anything else, is wrong. The rule is
applied by rewriting such predictions to the true label, after which the usual macro F1 applies.

``child_matrix[i, j] == 1`` when class j is class i or a subtype of it (the store's
``cell_type_hierarchy/child_matrix.npy``).

Which classes the macro average runs over is named by every function that takes one (``average_over``),
because the published evaluation used two rules and they can differ a lot:

- ``"union"``: the classes in the truth or the (corrected) predictions, sklearn's default label set. The rule
  for a whole split (``classification_report`` on the test set).
- ``"truth"``: the classes in the truth only (sklearn ``labels=np.unique(y_true)``). The rule for a subset of
  a split (one organ, organ system or tissue): a cross-organ model that calls a lung cell a kidney type loses
  recall on the true type, but the kidney type does not enter the lung average as a class with F1 0.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

AverageOver = Literal["union", "truth"]
AVERAGING = {"union": "the cell types in the truth or the (ontology-corrected) predictions",
             "truth": "the cell types in the truth only"}


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


def check_average_over(average_over: str) -> str:
    """``average_over`` if it names a rule; a typo must not silently pick one."""
    if average_over not in AVERAGING:
        raise ValueError(f"average_over must be one of {sorted(AVERAGING)}, got {average_over!r}")
    return average_over


def averaged_classes(cm: np.ndarray, *, average_over: AverageOver = "union") -> np.ndarray:
    """Mask of the classes a macro average over confusion ``cm`` runs over under ``average_over``."""
    check_average_over(average_over)
    cm = np.asarray(cm)
    in_truth = cm.sum(axis=1) > 0
    return in_truth if average_over == "truth" else in_truth | (cm.sum(axis=0) > 0)


def f1_from_confusion(cm: np.ndarray, *, average_over: AverageOver = "union") -> tuple[float, np.ndarray, np.ndarray]:
    """Macro F1 over the classes ``average_over`` names (see the module doc), per-class F1, support.

    0.0 when no class qualifies (no cells)."""
    used = averaged_classes(cm, average_over=average_over)
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    fp = cm.sum(axis=0) - tp
    fn = cm.sum(axis=1) - tp
    denom = 2 * tp + fp + fn
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    macro = float(f1[used].mean()) if used.any() else 0.0
    return macro, f1, cm.sum(axis=1).astype(np.int64)


def macro_f1(y_true, y_pred, child_matrix: np.ndarray | None = None, n_classes: int | None = None, *,
             average_over: AverageOver = "union") -> float:
    """Macro F1 over the classes ``average_over`` names; ontology-corrected when a child matrix is given."""
    if child_matrix is not None:
        n_classes = child_matrix.shape[0]
        y_pred = correct_predictions(y_true, y_pred, child_matrix)
    if n_classes is None:
        raise ValueError("give child_matrix or n_classes")
    return f1_from_confusion(confusion(y_true, y_pred, n_classes), average_over=average_over)[0]


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


def evaluate_probs(y_true, probs, child_matrix: np.ndarray, class_weights: np.ndarray | None = None, *,
                   average_over: AverageOver = "union") -> dict:
    """Scores of class probabilities (prediction = argmax, ontology-corrected).

    Keys: ``f1_macro`` (over the classes ``average_over`` names; their number is ``n_types``), ``accuracy``
    (ontology-corrected), ``nll`` (unweighted mean), ``weighted_loss`` (cross entropy weighted by
    ``class_weights[y]`` and normalised by their sum, as torch's weighted CrossEntropyLoss; None without
    weights), ``n_cells``, ``per_class_f1`` (float array, n_classes), ``per_class_support`` (int array) and
    ``average_over`` (the rule used).
    Empty input gives f1_macro 0.0 and NaN accuracy/nll/weighted_loss.
    """
    child_matrix = np.asarray(child_matrix)
    n_classes = child_matrix.shape[0]
    y_true, probs = _check_probs(y_true, probs, n_classes)
    pred = correct_predictions(y_true, probs.argmax(axis=1) if y_true.size else y_true, child_matrix)
    cm = confusion(y_true, pred, n_classes)
    macro, f1, support = f1_from_confusion(cm, average_over=average_over)
    n = int(y_true.size)
    per_cell = _nll_per_cell(y_true, probs)
    out = {"f1_macro": macro, "average_over": average_over,
           "n_types": int(averaged_classes(cm, average_over=average_over).sum()),
           "accuracy": float((pred == y_true).mean()) if n else float("nan"),
           "nll": float(per_cell.mean()) if n else float("nan"), "weighted_loss": None, "n_cells": n,
           "per_class_f1": f1, "per_class_support": support}
    if class_weights is not None:
        w = np.asarray(class_weights, dtype=np.float64).ravel()
        if w.shape != (n_classes,):
            raise ValueError(f"class_weights has shape {w.shape}, expected ({n_classes},)")
        wy = w[y_true]
        out["weighted_loss"] = float((wy * per_cell).sum() / wy.sum()) if n and wy.sum() > 0 else float("nan")
    return out


def split_scores(y_true, probs, child_matrix: np.ndarray, class_weights: np.ndarray, *,
                 average_over: AverageOver = "union") -> dict:
    """The training/tuning/experiment scores of a split or subset: ``f1_macro`` (over the classes
    ``average_over`` names: "union" for a whole split, "truth" for one organ or tissue), ``accuracy``
    (ontology-corrected), ``loss`` (class-weighted cross entropy) and ``rows``."""
    m = evaluate_probs(y_true, probs, child_matrix, class_weights, average_over=average_over)
    return {"f1_macro": m["f1_macro"], "accuracy": m["accuracy"], "loss": m["weighted_loss"], "rows": m["n_cells"]}
