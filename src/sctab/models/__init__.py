"""sctab.models: every model kind behind one classifier interface, and their folders.

- :class:`Classifier` (``predict_proba(x_log1p)``, ``genes``, ``classes``) for scTab's TabNet (exact 1.5-entmax
  masks), the MLP, the linear model, XGBoost on PCA and CellTypist; :class:`Ensemble` of members.
- :func:`load` / :func:`save`: the one reader and writer of model folders.
- :data:`KINDS`: the one kind -> class table; :func:`build_model` for the neural kinds' torch modules.
- Published scTab checkpoints: :func:`load_published_sctab`.
"""

from __future__ import annotations

from sctab.models.classifier import Classifier, ClassifierError, Ensemble, FeatureSpace
from sctab.models.entmax import Entmax15, Sparsemax, entmax15, entmax15_sort, sparsemax
from sctab.models.folder import (
    ENSEMBLE_FILE,
    SEEDS_FILE,
    ModelFolderError,
    is_model_folder,
    load,
    member_folders,
    read_meta,
    save,
    save_ensemble_summary,
)
from sctab.models.kinds import BASELINES, KINDS, MODEL_NAMES, NEURAL_MODELS, classifier_class, is_neural
from sctab.models.linear import LinearModel
from sctab.models.mlp import MLP
from sctab.models.neural import TorchClassifier, build_model, model_outputs, takes_sparse
from sctab.models.published import load_published_sctab, save_published_style_checkpoint
from sctab.models.reference_tabnet import ReferenceTabNet
from sctab.models.tabnet import TabNet

__all__ = [
    "Classifier", "ClassifierError", "Ensemble", "FeatureSpace", "TorchClassifier",
    "load", "save", "save_ensemble_summary", "ENSEMBLE_FILE", "SEEDS_FILE", "read_meta", "member_folders",
    "is_model_folder",
    "ModelFolderError",
    "KINDS", "NEURAL_MODELS", "MODEL_NAMES", "BASELINES", "classifier_class", "is_neural", "build_model",
    "model_outputs", "takes_sparse",
    "TabNet", "ReferenceTabNet", "MLP", "LinearModel",
    "entmax15", "entmax15_sort", "sparsemax", "Entmax15", "Sparsemax",
    "load_published_sctab", "save_published_style_checkpoint",
]
