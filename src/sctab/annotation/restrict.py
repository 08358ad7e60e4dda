"""``--restrict-to``: which of the model's classes a user allows, from labels or Cell Ontology ids.

A user often knows what cannot be in the sample (a blood sample holds no hepatocytes) and names what can,
in their own words: a model class by label or CL id, or a broader ontology term (``T cell``, ``CL:0000084``)
that stands for every model class below it (scTab issue 20: map my own CL ids onto the model's types).
Names match exactly, then case-insensitively; anything else is an error that lists close matches, since a
silently dropped name would change every prediction.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

import numpy as np

from sctab.annotation.bundle import Bundle
from sctab.annotation.errors import AnnotateError


def _terms(bundle: Bundle) -> dict[str, str]:
    """Every name a user may type -> the ontology term id it stands for (classes and their ancestors)."""
    names: dict[str, str] = {}
    for term, label in bundle.ontology.labels.items():
        names[term] = term
        names.setdefault(label, term)
    for label, term in zip(bundle.space.classes, bundle.class_ids):
        names[label] = term  # a class label always means that class, even if an ancestor shares the name
        names[term] = term
    return names


def _classes_under(bundle: Bundle, term: str) -> list[int]:
    """Indices of the model classes that are ``term`` or lie below it in the ontology."""
    return [i for i, cid in enumerate(bundle.class_ids)
            if cid == term or term in bundle.ontology.ancestors.get(cid, frozenset())]


def restriction_mask(bundle: Bundle, names: Iterable[str]) -> np.ndarray:
    """Boolean mask over the model's classes: True for each class named, or below a named ontology term."""
    wanted = [str(n).strip() for n in names if str(n).strip()]
    if not wanted:
        raise AnnotateError("--restrict-to names no label: give model class labels or Cell Ontology ids")
    known = _terms(bundle)
    folded = {k.casefold(): v for k, v in known.items()}
    mask = np.zeros(len(bundle.class_ids), dtype=bool)
    unknown, empty = [], []
    for name in wanted:
        term = known.get(name) or folded.get(name.casefold())
        if term is None:
            unknown.append(name)
            continue
        idx = _classes_under(bundle, term)
        if not idx:
            empty.append(f"{name!r} ({term}) is above none of the model's classes")
        mask[idx] = True
    if unknown:
        lines = []
        for name in unknown:
            close = difflib.get_close_matches(name, list(known), n=4, cutoff=0.6)
            lines.append(f"{name!r}" + (f" (close: {', '.join(repr(c) for c in close)})" if close else ""))
        raise AnnotateError(f"--restrict-to: unknown label(s) or Cell Ontology id(s) {'; '.join(lines)}. The model "
                            f"knows {len(bundle.class_ids)} classes, e.g. {', '.join(bundle.space.classes[:5])}")
    if not mask.any():
        raise AnnotateError(f"--restrict-to: {'; '.join(empty)}; nothing would be left to predict")
    return mask


def renormalise(probs: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Probabilities over the allowed classes only, each row summing to 1 (others 0).

    A row that puts no mass at all on the set (possible only by float underflow) becomes uniform over it.
    """
    out = np.where(mask[None, :], probs, 0.0).astype(np.float64)
    sums = out.sum(axis=1, keepdims=True)
    zero = (sums[:, 0] <= 0) & np.isfinite(sums[:, 0])
    out[zero] = mask / mask.sum()
    sums[zero] = 1.0
    return (out / sums).astype(probs.dtype, copy=False)
