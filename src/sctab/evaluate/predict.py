"""Predictions of any classifier over a store split, streamed one row group at a time.

Rows come in file order, so the returned codes equal the store's codes for that split and line up with
``store.read_obs(split, ...)``. Before predicting, the classifier's genes and classes are checked against
the store's (same ids, same order).
"""

from __future__ import annotations

import numpy as np

from sctab.data.store import Store
from sctab.models import Classifier

__all__ = ["predict_split", "predict_split_members", "check_fits_store"]


def check_fits_store(clf: Classifier, store: Store) -> None:
    """Raise ClassifierError unless the classifier's genes and classes are the store's, in the same order."""
    where = f"model {getattr(clf, 'path', None) or clf.kind} vs store {store.root}"
    clf.space.check_same(store, where)


def predict_split_members(clf: Classifier, store: Store, split: str) -> tuple[np.ndarray, list[np.ndarray]]:
    """(true codes, each member's probabilities) for every row of ``split``; a single model has one member.

    The split is read once for all members.
    """
    check_fits_store(clf, store)
    members = clf.members
    ys, ps = [], [[] for _ in members]
    for g in store.iter_row_groups(split, ("X", "cell_type")):
        ys.append(np.asarray(g["cell_type"], dtype=np.int64))
        for acc, m in zip(ps, members):
            acc.append(m.predict_proba(g["X"]))
    if not ys:
        return np.zeros(0, np.int64), [np.zeros((0, store.n_classes), np.float32) for _ in members]
    return np.concatenate(ys), [np.concatenate(p).astype(np.float32, copy=False) for p in ps]


def predict_split(clf: Classifier, store: Store, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(true codes int64 (n,), probabilities float32 (n, C)); an ensemble's are its members' mean, taken per
    row group so only one set of probabilities is held."""
    check_fits_store(clf, store)
    ys, ps = [], []
    for g in store.iter_row_groups(split, ("X", "cell_type")):
        ys.append(np.asarray(g["cell_type"], dtype=np.int64))
        ps.append(clf.predict_proba(g["X"]))
    if not ys:
        return np.zeros(0, np.int64), np.zeros((0, store.n_classes), np.float32)
    return np.concatenate(ys), np.concatenate(ps).astype(np.float32, copy=False)
