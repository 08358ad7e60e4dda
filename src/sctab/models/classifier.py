"""One shape for every model kind: log1p-normalised cells in, class probabilities out.

Every kind (scTab, MLP, linear, XGBoost on PCA, CellTypist) is a :class:`Classifier` that carries its genes
and classes (a :class:`FeatureSpace`) and answers ``predict_proba(x_log1p)``. An :class:`Ensemble` of
classifiers is itself a classifier and the only place a mean of members is taken. Reading and writing a
classifier's folder is :mod:`sctab.models.folder`; evaluation, the registry's pyfunc, serving and
``sctab annotate`` all go through this interface, so they cannot disagree on what a model computes.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd

__all__ = ["FeatureSpace", "Classifier", "Ensemble", "ClassifierError"]


class ClassifierError(ValueError):
    """A model does not fit the data it is asked about (other genes, other classes, wrong shape)."""


def first_difference(a: Sequence[str], b: Sequence[str]) -> str:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return f"first difference at position {i}: {x!r} vs {y!r}"
    return f"lengths {len(a)} vs {len(b)}"


@dataclass(frozen=True)
class FeatureSpace:
    """A model's genes (``var``: feature_id, feature_name, in input order) and classes (in output order).

    A :class:`sctab.data.store.Store` answers the same questions (``var``, ``classes``), so either can be
    handed to code that needs to know the genes and classes.
    """

    var: pd.DataFrame
    classes: list[str]

    @classmethod
    def of(cls, source) -> FeatureSpace:
        """The space of a store, a classifier or a space."""
        if isinstance(source, FeatureSpace):
            return source
        space = getattr(source, "space", None)
        if isinstance(space, FeatureSpace):
            return space
        return cls(var=source.var[["feature_id", "feature_name"]].reset_index(drop=True),
                   classes=[str(c) for c in source.classes])

    @property
    def genes(self) -> list[str]:
        return self.var["feature_id"].astype(str).tolist()

    @property
    def n_genes(self) -> int:
        return len(self.var)

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    def check_same(self, other, what: str) -> None:
        """Raise ClassifierError unless ``other`` (a store, classifier or space) has the same genes and classes."""
        other = FeatureSpace.of(other)
        if self.genes != other.genes:
            raise ClassifierError(f"{what}: {self.n_genes} genes differ from the {other.n_genes} expected: "
                                  f"{first_difference(self.genes, other.genes)}")
        if self.classes != other.classes:
            raise ClassifierError(f"{what}: {self.n_classes} classes differ from the {other.n_classes} expected: "
                                  f"{first_difference(self.classes, other.classes)}")


class Classifier(ABC):
    """What every model kind answers. ``kind`` names it in ``model.yaml`` (``model:``)."""

    kind: ClassVar[str]
    #: file in the model folder that holds the fitted model itself (weights, booster, CellTypist pickle)
    model_file: ClassVar[str]
    #: the model file is a pickle (can run code when read): loaded only when the caller trusts it
    pickled: ClassVar[bool] = False
    #: what the model reads, in words (model.yaml ``input``)
    input_description: ClassVar[str] = "normalised genes (log1p of counts scaled to target_sum)"
    space: FeatureSpace
    #: settings the model was built with (architecture, booster config), written to model.yaml
    config: dict
    #: model.yaml (or ensemble.json) of the folder it was read from, and that folder
    meta: dict = {}
    path: Path | None = None

    @property
    def run_id(self) -> str | None:
        """The MLflow run that trained it (an ensemble's parent run)."""
        return self.meta.get("run_id") or self.meta.get("parent_run_id")

    @property
    def genes(self) -> list[str]:
        return self.space.genes

    @property
    def classes(self) -> list[str]:
        return self.space.classes

    @property
    def n_classes(self) -> int:
        return self.space.n_classes

    @abstractmethod
    def predict_proba(self, x_log1p: np.ndarray) -> np.ndarray:
        """(cells, n_classes) float32 class probabilities of log1p-normalised cells (cells, n_genes)."""

    def member_probas(self, x_log1p: np.ndarray) -> list[np.ndarray]:
        """Each member's probabilities; a single model is an ensemble of one."""
        return [self.predict_proba(x_log1p)]

    @property
    def members(self) -> list[Classifier]:
        return [self]

    def to(self, device) -> Classifier:
        """Place the model on ``device`` (a no-op for kinds that have no device)."""
        return self

    @abstractmethod
    def save_model_file(self, folder: Path) -> None:
        """Write ``folder / self.model_file`` (plus any side files the kind needs)."""

    @classmethod
    @abstractmethod
    def load_model_file(cls, folder: Path, space: FeatureSpace, meta: dict, *, device: str = "cpu",
                        trust_pickle: bool = False) -> Classifier:
        """Rebuild from a folder written by :meth:`save_model_file` (model.yaml already read into ``meta``)."""

    def _check_input(self, x) -> None:
        if x.ndim != 2 or x.shape[1] != self.space.n_genes:
            raise ClassifierError(f"{self.kind}: input has shape {tuple(x.shape)}; expected (cells, "
                                  f"{self.space.n_genes}) log1p-normalised values of the model's genes")


@dataclass(eq=False)
class Ensemble(Classifier):
    """Members of one kind on one feature space; the prediction is the mean of their probabilities."""

    members_: list[Classifier]
    names: list[str] = field(default_factory=list)
    meta: dict = field(default_factory=dict)
    model_file: ClassVar[str] = "ensemble.json"

    def __post_init__(self):
        if not self.members_:
            raise ClassifierError("an ensemble needs at least one member")
        kinds = {m.kind for m in self.members_}
        if len(kinds) != 1:
            raise ClassifierError(f"ensemble members of different kinds: {sorted(kinds)}")
        for i, m in enumerate(self.members_[1:], 1):
            m.space.check_same(self.members_[0], f"ensemble member {self.names[i] if self.names else i}")
        if not self.names:
            self.names = [f"member_{i}" for i in range(len(self.members_))]

    @property
    def kind(self) -> str:  # type: ignore[override]
        return f"{self.members_[0].kind}-ensemble"

    @property
    def member_kind(self) -> str:
        return self.members_[0].kind

    @property
    def space(self) -> FeatureSpace:  # type: ignore[override]
        return self.members_[0].space

    @property
    def config(self) -> dict:  # type: ignore[override]
        return self.members_[0].config

    @property
    def members(self) -> list[Classifier]:
        return list(self.members_)

    def to(self, device) -> Ensemble:
        for m in self.members_:
            m.to(device)
        return self

    @staticmethod
    def mean(probas: Sequence[np.ndarray]) -> np.ndarray:
        """The members' mean probability, accumulated in float64, as float32: the ensemble's prediction."""
        if len(probas) == 0:
            raise ClassifierError("an ensemble needs at least one member's probabilities")
        shape = np.shape(probas[0])
        if len(shape) != 2:
            raise ClassifierError(f"member probabilities must be (cells, classes), got shape {shape}")
        total = np.zeros(shape, dtype=np.float64)
        for i, p in enumerate(probas):
            if np.shape(p) != shape:
                raise ClassifierError(f"member {i} has probabilities of shape {np.shape(p)}, member 0 {shape}")
            total += p
        return (total / len(probas)).astype(np.float32)

    def member_probas(self, x_log1p) -> list[np.ndarray]:
        return [m.predict_proba(x_log1p) for m in self.members_]

    def predict_proba(self, x_log1p) -> np.ndarray:
        return self.mean(self.member_probas(x_log1p))

    def save_model_file(self, folder: Path) -> None:  # pragma: no cover - ensembles are written by folder.py
        raise NotImplementedError("an ensemble folder is written by sctab.models.folder.save")

    @classmethod
    def load_model_file(cls, folder, space, meta, **kw):  # pragma: no cover - read by folder.py
        raise NotImplementedError("an ensemble folder is read by sctab.models.folder.load")
