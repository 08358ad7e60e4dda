"""The options of ``annotate`` and ``annotate_file`` checked, and the models they name loaded, before any cell
is read: a bad option, an unloadable model or a ``compare_with`` model that cannot be compared fails fast and
nothing is written. Both entry points share this so that they refuse the same things in the same order.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from sctab.annotation.annotator import Annotator
from sctab.annotation.errors import AnnotateError
from sctab.annotation.resolve import load_annotator

DEFAULT_ONTOLOGY = "data/ontology/cl.obo"  # the project's; without it compare_labels uses the model's release


@dataclass
class Voting:
    """Majority voting settings: clusters from an obs column, or Leiden at ``resolution`` (None: by cell count)."""

    column: str | None = None
    resolution: float | None = None
    min_prop: float = 0.0


@dataclass
class Settings:
    """One call's checked options and loaded models (the input's own parts, its labels and clusters, come later)."""

    ann: Annotator
    voting: Voting | None
    ontology: object                 # the Cell Ontology OBO for compare_labels and compare_with
    previous: Annotator | None       # the compare_with model (None: none)
    change_ontology: object          # the ontology its changes are classified in
    gene_column: str | None
    min_gene_coverage: float | None
    batch_size: int
    progress: bool
    probabilities: bool
    compare_labels: str | None
    label_map: object


def settle(model, *, trust_pickle: bool, uncertainty_threshold, min_probability, restrict_to, majority_voting: bool,
           over_clustering: str | None, resolution: float | None, min_prop: float, ontology, compare_with,
           gene_column: str | None, min_gene_coverage: float | None, batch_size: int, progress: bool,
           probabilities: bool, compare_labels: str | None, label_map) -> Settings:
    """The call's options checked and its models loaded, in the order both entry points have always used."""
    voting = voting_settings(majority_voting, over_clustering, resolution, min_prop)
    ann = as_annotator(model, trust_pickle, uncertainty_threshold, min_probability, restrict_to)
    onto_path = DEFAULT_ONTOLOGY if ontology is None else ontology
    prev, change_onto = previous_model(compare_with, ann, trust_pickle, uncertainty_threshold, min_probability,
                                       restrict_to, onto_path)
    return Settings(ann=ann, voting=voting, ontology=onto_path, previous=prev, change_ontology=change_onto,
                    gene_column=gene_column, min_gene_coverage=min_gene_coverage, batch_size=batch_size,
                    progress=progress, probabilities=probabilities, compare_labels=compare_labels,
                    label_map=label_map)


#: the options of ``annotate`` and ``annotate_file`` that :func:`settle` checks (its keyword arguments)
SETTLE_OPTIONS = tuple(inspect.signature(settle).parameters)[1:]


def settle_call(model, options: dict) -> Settings:
    """:func:`settle` with the options picked from ``options`` (an entry point's ``locals()``), so that both
    entry points pass the same list."""
    return settle(model, **{k: options[k] for k in SETTLE_OPTIONS})


def as_annotator(model, trust_pickle: bool, uncertainty_threshold, min_probability=None,
                 restrict_to=None) -> Annotator:
    """The model loaded (or a given Annotator copied) with the call's settings; bad settings fail here,
    before any input is read."""
    if min_probability is not None and not 0.0 <= float(min_probability) <= 1.0:
        raise AnnotateError(f"min_probability must be between 0 and 1 (0 disables it), got {min_probability}")
    if isinstance(model, Annotator):
        ann = model if uncertainty_threshold is None else replace(model, uncertainty_threshold=uncertainty_threshold)
    else:
        ann = load_annotator(model, trust_pickle=trust_pickle, uncertainty_threshold=uncertainty_threshold)
    if min_probability is not None:
        ann = replace(ann, min_probability=float(min_probability))
    if restrict_to is not None:
        ann = ann.restrict([restrict_to] if isinstance(restrict_to, str) else list(restrict_to))
    return ann


def voting_settings(majority_voting: bool, over_clustering: str | None, resolution: float | None,
                    min_prop: float) -> Voting | None:
    """Voting settings, or None; a cluster column implies voting (it is only used for voting)."""
    if not (majority_voting or over_clustering):
        return None
    if not 0.0 <= min_prop <= 1.0:
        raise AnnotateError(f"min_prop must be between 0 and 1, got {min_prop}")
    if resolution is not None and resolution <= 0:
        raise AnnotateError(f"the over-clustering resolution must be > 0, got {resolution}")
    return Voting(column=over_clustering, resolution=resolution, min_prop=min_prop)


def cluster_column(obs: pd.DataFrame, column: str, where: str) -> np.ndarray:
    """The given over-clustering as strings; every cell needs one."""
    if column not in obs.columns:
        raise AnnotateError(f"over-clustering column {column!r} is not in the obs of {where} (its columns: "
                            f"{', '.join(map(str, obs.columns)) or 'none'})")
    values = obs[column]
    if values.isna().any():
        raise AnnotateError(f"over-clustering column {column!r} of {where} has {int(values.isna().sum())} missing "
                            f"value(s); every cell needs a cluster")
    return values.astype(str).to_numpy()


def user_labels(obs: pd.DataFrame, column: str | None, ann: Annotator, label_map, ontology, where: str):
    """(mapped user labels, ontology) for ``compare_labels``, or (None, None); checked before any prediction,
    so a missing column or labels that map to nothing fail before the cells are read."""
    if column is None:
        return None, None
    from sctab.annotation.compare import load_ontology, map_user_labels, read_label_map

    if column not in obs.columns:
        raise AnnotateError(f"--compare-labels: obs column {column!r} is not in {where} (its columns: "
                            f"{', '.join(map(str, obs.columns)) or 'none'})")
    mapping = read_label_map(label_map)
    onto = load_ontology(ontology, ann.bundle.meta.get("ontology_version"))
    absent = [c for c in ann.bundle.class_ids if c not in onto]
    if absent:
        raise AnnotateError(f"--compare-labels: the Cell Ontology {onto.path} ({onto.version}) lacks {len(absent)} of "
                            f"the model's classes, e.g. {absent[:3]} (the model was built with "
                            f"{ann.bundle.meta.get('ontology_version')}); give that release with --ontology")
    return map_user_labels(obs[column].to_numpy(), onto, mapping, column=column, where=where), onto


def model_name(ann: Annotator) -> str:
    return str(ann.description.get("model", ann.bundle.path))


def previous_model(compare_with, ann: Annotator, trust_pickle: bool, uncertainty_threshold, min_probability,
                   restrict_to, ontology):
    """(the ``compare_with`` model with the call's label settings, the ontology of the changes), or (None, None);
    checked before any cell is read: it must load, share genes with ``ann`` and have its classes in the ontology."""
    if compare_with is None:
        return None, None
    from sctab.annotation.changes import check_classes
    from sctab.annotation.compare import load_ontology

    try:
        prev = as_annotator(compare_with, trust_pickle, uncertainty_threshold, min_probability, restrict_to)
    except AnnotateError as e:
        raise AnnotateError(f"--compare-with: {e}") from e
    if not set(prev.genes) & set(ann.genes):
        raise AnnotateError(f"--compare-with: {model_name(prev)} ({len(prev.genes):,} genes, e.g. "
                            f"{', '.join(prev.genes[:3])}) and {model_name(ann)} ({len(ann.genes):,} genes, e.g. "
                            f"{', '.join(ann.genes[:3])}) share no genes: their labels would come from disjoint "
                            f"measurements of the cells; compare models of a common gene space")
    version = ann.bundle.meta.get("ontology_version") or prev.bundle.meta.get("ontology_version")
    try:
        onto = load_ontology(ontology, version)
    except AnnotateError as e:
        raise AnnotateError(str(e).replace("comparing labels", "--compare-with")) from e
    check_classes(onto, {model_name(ann): list(ann.bundle.class_ids), model_name(prev): list(prev.bundle.class_ids)})
    return prev, onto
