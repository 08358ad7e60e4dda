"""The one table of model kinds: name -> classifier class (and, for the neural kinds, torch module).

Everything that asks "which kind is this?" asks here: building a network for training, reading a model
folder, the registry, the tuning studies. Adding a kind is one row.
"""

from __future__ import annotations

from sctab.models.celltypist_model import CellTypistClassifier
from sctab.models.classifier import Classifier
from sctab.models.neural import MODEL_NAMES, NEURAL_MODELS, TorchClassifier, build_model
from sctab.models.xgboost_model import XGBoostClassifier

__all__ = ["NEURAL_MODELS", "BASELINES", "MODEL_NAMES", "KINDS", "classifier_class", "build_model", "is_neural"]

#: kinds fitted outside the torch loop (XGBoost on PCA, CellTypist)
BASELINES = ("xgboost", "celltypist")
KINDS: dict[str, type[Classifier]] = {
    **{k: TorchClassifier for k in NEURAL_MODELS},
    "xgboost": XGBoostClassifier,
    "celltypist": CellTypistClassifier,
}


def is_neural(kind: str) -> bool:
    return kind in NEURAL_MODELS


def classifier_class(kind: str) -> type[Classifier]:
    try:
        return KINDS[str(kind).lower().strip()]
    except KeyError:
        raise ValueError(f"unknown model kind {kind!r}; known: {', '.join(KINDS)}") from None
