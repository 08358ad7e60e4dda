"""From a block of a user's counts to labels: gene reindexing, normalisation, members, fallback label.

The model sees what it was trained on: counts of its own genes (absent ones zero), scaled per cell to
``target_sum`` and log1p-transformed by the store writer's own function (Methods; the size factor is taken
over the model's genes, as the store does). The ensemble's answer is the members' mean softmax; uncertainty
is 1 - its maximum. Above the uncertainty threshold a coarser label is offered too: the lowest common
ancestor, in the Cell Ontology, of the smallest set of classes holding ``coverage`` of the probability.

Two CellTypist-style settings act on the probabilities: a restriction to some classes (renormalised over
them) and a minimum probability (CellTypist's ``p_thres``) below which the label is "Unassigned"; such a
cell still gets the coarse label, which says what it surely is. Without a given minimum the model's own
default applies (chosen on its validation split at registration, ``min_probability`` in bundle.yaml).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd

from sctab.annotation.bundle import Bundle
from sctab.census.counts import to_model_space  # noqa: F401 (re-exported: annotation's API)
from sctab.data.normalize import cell_sums, normalize_log1p

UNASSIGNED = "Unassigned"  # CellTypist's word, for cells without counts or below the minimum probability
COLUMNS = ("label", "cell_type_ontology_term_id", "probability", "uncertainty", "coarse_label",
           "coarse_ontology_term_id")


@dataclass
class Annotator:
    """A loaded bundle plus the settings of the coarse fallback label."""

    bundle: Bundle
    uncertainty_threshold: float | None = None
    description: dict = field(default_factory=dict)
    min_probability: float | None = None  # None: the bundle's default (0 when it records none)
    allowed: np.ndarray | None = None     # boolean mask over the classes (``restrict_to``); None: all

    @property
    def genes(self) -> list[str]:
        return self.bundle.space.genes

    @property
    def threshold(self) -> float:
        if self.uncertainty_threshold is not None:
            return float(self.uncertainty_threshold)
        return float(self.bundle.fallback["uncertainty_threshold"])

    @property
    def probability_floor(self) -> float:
        """The minimum probability in use: the given one, else the model's recorded default, else 0."""
        if self.min_probability is not None:
            return float(self.min_probability)
        return float((self.bundle.meta.get("min_probability") or {}).get("value", 0.0))

    def restrict(self, names) -> Annotator:
        """A copy that predicts only the named classes (labels, CL ids or ontology terms above classes)."""
        from sctab.annotation.restrict import restriction_mask

        return replace(self, allowed=None if names is None else restriction_mask(self.bundle, names))

    def probabilities(self, x_log1p: np.ndarray) -> np.ndarray:
        """The model's (the members' mean) class probabilities of normalised cells, renormalised over the
        allowed classes when restricted."""
        probs = self.bundle.classifier.predict_proba(x_log1p)
        if self.allowed is not None:
            from sctab.annotation.restrict import renormalise

            probs = renormalise(probs, self.allowed)
        return probs

    def predict_block(self, counts) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(probabilities, has-counts mask, normalised log1p values) of (cells, model genes) raw counts.

        Rows of cells without counts hold NaN probabilities."""
        ok = cell_sums(counts) > 0
        x = normalize_log1p(counts, self.bundle.target_sum, allow_empty=True)
        probs = np.full((x.shape[0], self.bundle.space.n_classes), np.nan, dtype=np.float32)
        if ok.any():
            probs[ok] = self.probabilities(x[ok])
        return probs, ok, x

    def predict_counts(self, counts) -> pd.DataFrame:
        """Labels for (cells, model genes) raw counts, dense or sparse (zeros where a gene is absent).

        Normalised by the function the store writer uses; cells without counts get no label.
        """
        probs, ok, _ = self.predict_block(counts)
        return self.frame(probs, ok)

    def frame(self, probs: np.ndarray, ok: np.ndarray) -> pd.DataFrame:
        labels = np.asarray(self.bundle.space.classes, dtype=object)
        ids = np.asarray(self.bundle.class_ids, dtype=object)
        n = len(probs)
        best = np.zeros(n, dtype=np.int64)
        best[ok] = probs[ok].argmax(axis=1)
        pmax = np.full(n, np.nan)
        pmax[ok] = probs[ok][np.arange(ok.sum()), best[ok]]
        floor = self.probability_floor
        below = ok & ~(np.nan_to_num(pmax, nan=0.0) >= floor)  # p >= floor is assigned; floor 0 assigns all
        assigned = ok & ~below
        out = pd.DataFrame({
            "label": np.where(assigned, labels[best], UNASSIGNED),
            "cell_type_ontology_term_id": np.where(assigned, ids[best], ""),
            "probability": pmax,
            "uncertainty": 1.0 - pmax,
        })
        coarse_id = np.where(ok, ids[best], "").astype(object)
        fb = self.bundle.fallback
        unsure = np.flatnonzero(ok & ((out["uncertainty"].to_numpy() > self.threshold) | below))
        for i in unsure:
            order = np.argsort(-probs[i])
            k = int(np.searchsorted(np.cumsum(probs[i][order]), fb["coverage"]) + 1)
            k = max(1, min(k, int(fb["max_labels"]), len(order)))
            coarse_id[i] = self.bundle.ontology.lowest_common_ancestor([ids[j] for j in order[:k]])
        onto_labels = self.bundle.ontology.labels
        out["coarse_ontology_term_id"] = coarse_id
        out["coarse_label"] = [onto_labels.get(t, UNASSIGNED) if t else UNASSIGNED for t in coarse_id]
        return out[list(COLUMNS)]
