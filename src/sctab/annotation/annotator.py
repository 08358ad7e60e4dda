"""From a block of a user's counts to labels: gene reindexing, normalisation, members, fallback label.

The model sees what it was trained on: counts of its own genes (absent ones zero), scaled per cell to
``target_sum`` and log1p-transformed by the store writer's own function (Methods; the size factor is taken
over the model's genes, as the store does). The ensemble's answer is the members' mean softmax; uncertainty
is 1 - its maximum. Above the uncertainty threshold a coarser label is offered too: the lowest common
ancestor, in the Cell Ontology, of the smallest set of classes holding ``coverage`` of the probability.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from sctab.annotation.bundle import Bundle
from sctab.census.counts import to_model_space  # noqa: F401 (re-exported: annotation's API)
from sctab.data.normalize import cell_sums, normalize_log1p

UNASSIGNED = "unassigned"
COLUMNS = ("label", "cell_type_ontology_term_id", "probability", "uncertainty", "coarse_label",
           "coarse_ontology_term_id")


@dataclass
class Annotator:
    """A loaded bundle plus the settings of the coarse fallback label."""

    bundle: Bundle
    uncertainty_threshold: float | None = None
    description: dict = field(default_factory=dict)

    @property
    def genes(self) -> list[str]:
        return self.bundle.genes

    @property
    def threshold(self) -> float:
        if self.uncertainty_threshold is not None:
            return float(self.uncertainty_threshold)
        return float(self.bundle.fallback["uncertainty_threshold"])

    def probabilities(self, x_log1p: np.ndarray) -> np.ndarray:
        """The model's (the members' mean) class probabilities of normalised cells."""
        return self.bundle.classifier.predict_proba(x_log1p)

    def predict_counts(self, counts) -> pd.DataFrame:
        """Labels for (cells, model genes) raw counts, dense or sparse (zeros where a gene is absent).

        Normalised by the function the store writer uses; cells without counts get no label.
        """
        ok = cell_sums(counts) > 0
        x = normalize_log1p(counts, self.bundle.target_sum, allow_empty=True)
        n = x.shape[0]
        probs = np.full((n, self.bundle.space.n_classes), np.nan, dtype=np.float32)
        if ok.any():
            probs[ok] = self.probabilities(x[ok])
        return self.frame(probs, ok)

    def frame(self, probs: np.ndarray, ok: np.ndarray) -> pd.DataFrame:
        labels = np.asarray(self.bundle.space.classes, dtype=object)
        ids = np.asarray(self.bundle.class_ids, dtype=object)
        n = len(probs)
        best = np.zeros(n, dtype=np.int64)
        best[ok] = probs[ok].argmax(axis=1)
        pmax = np.full(n, np.nan)
        pmax[ok] = probs[ok][np.arange(ok.sum()), best[ok]]
        out = pd.DataFrame({
            "label": np.where(ok, labels[best], UNASSIGNED),
            "cell_type_ontology_term_id": np.where(ok, ids[best], ""),
            "probability": pmax,
            "uncertainty": 1.0 - pmax,
        })
        coarse_id = out["cell_type_ontology_term_id"].to_numpy(dtype=object).copy()
        fb = self.bundle.fallback
        unsure = np.flatnonzero(ok & (out["uncertainty"].to_numpy() > self.threshold))
        for i in unsure:
            order = np.argsort(-probs[i])
            k = int(np.searchsorted(np.cumsum(probs[i][order]), fb["coverage"]) + 1)
            k = max(1, min(k, int(fb["max_labels"]), len(order)))
            coarse_id[i] = self.bundle.ontology.lowest_common_ancestor([ids[j] for j in order[:k]])
        onto_labels = self.bundle.ontology.labels
        out["coarse_ontology_term_id"] = coarse_id
        out["coarse_label"] = [onto_labels.get(t, UNASSIGNED) if t else UNASSIGNED for t in coarse_id]
        return out[list(COLUMNS)]
