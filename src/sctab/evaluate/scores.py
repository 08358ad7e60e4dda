"""The scores every fit reports: ontology-corrected macro F1, accuracy and class-weighted loss of a split.

One definition for the training stages, tuning trials, sweep points and ensembles (the evaluate stage
adds per-organ, per-class and uncertainty scores on top, from the same :mod:`sctab.evaluate.metrics`).
"""

from __future__ import annotations

import numpy as np

from sctab.data.store import Store
from sctab.evaluate.metrics import AverageOver, split_scores
from sctab.evaluate.predict import predict_split
from sctab.models import Classifier

__all__ = ["score_probs", "score_split", "score_splits"]


def score_probs(y: np.ndarray, p: np.ndarray, store: Store, *, average_over: AverageOver = "union") -> dict:
    """:func:`sctab.evaluate.metrics.split_scores` with the store's ontology and class weights: f1_macro (over
    the classes ``average_over`` names: "union" for a whole split, "truth" for a subset), accuracy, loss and rows."""
    return split_scores(y, p, store.child_matrix(), store.class_weights(), average_over=average_over)


def score_split(clf: Classifier, store: Store, split: str) -> dict:
    """:func:`score_probs` of the classifier's predictions over one split of the store."""
    return score_probs(*predict_split(clf, store, split), store)


def score_splits(clf: Classifier, store: Store, splits=("val", "test")) -> dict:
    """``<split>_<score>`` for each split (rows left out), flat, as runs and reports log them."""
    out = {}
    for split in splits:
        out.update({f"{split}_{k}": v for k, v in score_split(clf, store, split).items() if k != "rows"})
    return out
