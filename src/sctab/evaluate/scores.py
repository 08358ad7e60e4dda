"""The scores every fit reports: ontology-corrected macro F1, accuracy and class-weighted loss of a split.

One definition for the training stages, tuning trials, sweep points and ensembles (the evaluate stage
adds per-organ, per-class and uncertainty scores on top, from the same :mod:`sctab.evaluate.metrics`).
"""

from __future__ import annotations

import numpy as np

from sctab.data.store import Store
from sctab.evaluate.metrics import evaluate_probs
from sctab.evaluate.predict import predict_split
from sctab.models import Classifier

__all__ = ["score_probs", "score_split", "score_splits"]


def score_probs(y: np.ndarray, p: np.ndarray, store: Store) -> dict:
    """f1_macro (over the classes in truth or prediction: a whole split), accuracy, loss (cross entropy weighted
    by the store's class weights) and rows, of probabilities ``p`` against codes ``y``."""
    m = evaluate_probs(y, p, store.child_matrix(), store.class_weights())
    return {"f1_macro": m["f1_macro"], "accuracy": m["accuracy"], "loss": m["weighted_loss"], "rows": m["n_cells"]}


def score_split(clf: Classifier, store: Store, split: str) -> dict:
    """:func:`score_probs` of the classifier's predictions over one split of the store."""
    return score_probs(*predict_split(clf, store, split), store)


def score_splits(clf: Classifier, store: Store, splits=("val", "test")) -> dict:
    """``<split>_<score>`` for each split (rows left out), flat, as runs and reports log them."""
    out = {}
    for split in splits:
        out.update({f"{split}_{k}": v for k, v in score_split(clf, store, split).items() if k != "rows"})
    return out
