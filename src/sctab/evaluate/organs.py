"""Scores per organ system (paper, Fig. 1d and Fig. 2c: macro F1 "grouped by organ system").

Cells are grouped by the census ``tissue_general`` of the cell; ``conf/organ_systems.yaml`` maps those values
to the paper's 15 systems, two ways (see the file's header):

- ``grouping="primary"`` (default): one system per tissue_general value, so every cell counts once; values
  the file does not map, or lists as unassigned, count under ``"other"``.
- ``grouping="reference"``: the published code's grouping, verbatim. It overlaps (spleen is in gut and in
  blood_and_immune, ...), so a cell may count in several systems; cells in none count under ``"other"``.

Within a system the ontology-corrected macro F1 is taken by :func:`sctab.evaluate.metrics.f1_from_confusion`,
by default over the classes of the system's truth only (``average_over="truth"``), as the published code did
for a subset; ``average_over="union"`` also counts the classes only predicted there.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import yaml

from sctab.config import REPO_ROOT
from sctab.evaluate.metrics import (
    AverageOver,
    averaged_classes,
    check_average_over,
    confusion,
    correct_predictions,
    f1_from_confusion,
)

ORGAN_SYSTEMS = ("adipose", "breast", "eye", "gut", "heart", "blood_and_immune", "kidney", "liver", "lung",
                 "musculoskeletal", "nervous_system", "oral_and_craniofacial", "pancreas", "reproduction", "skin")
OTHER = "other"
MAPPING_FILE = REPO_ROOT / "conf" / "organ_systems.yaml"
GROUPINGS = ("primary", "reference")


class OrganMappingError(ValueError):
    """The organ-system mapping file is missing or names an unknown system."""


@lru_cache(maxsize=4)
def _load(path: str) -> tuple[dict[str, str], frozenset[str], dict[str, tuple[str, ...]]]:
    p = Path(path)
    if not p.exists():
        raise OrganMappingError(f"organ-system mapping {p} does not exist")
    doc = yaml.safe_load(p.read_text()) or {}
    primary = {str(k).strip(): str(v).strip() for k, v in (doc.get("primary") or {}).items()}
    unassigned = frozenset(str(t).strip() for t in (doc.get("unassigned") or []))
    reference = {str(k).strip(): tuple(str(t).strip() for t in v) for k, v in (doc.get("reference") or {}).items()}
    known = set(ORGAN_SYSTEMS)
    bad = sorted({v for v in primary.values() if v not in known} | {k for k in reference if k not in known})
    if bad:
        raise OrganMappingError(f"{p} names unknown organ systems {bad}; known: {', '.join(ORGAN_SYSTEMS)}")
    both = sorted(set(primary) & unassigned)
    if both:
        raise OrganMappingError(f"{p}: {both} are both mapped and listed as unassigned")
    return primary, unassigned, reference


def organ_map(path: str | Path | None = None) -> dict[str, str]:
    """The primary mapping: census tissue_general -> organ system (a copy)."""
    return dict(_load(str(path or MAPPING_FILE))[0])


def reference_grouping(path: str | Path | None = None) -> dict[str, tuple[str, ...]]:
    """The published code's grouping: organ system -> tissue_general values (overlapping)."""
    return dict(_load(str(path or MAPPING_FILE))[2])


def _lookup(table: dict, tissue_general: str):
    t = str(tissue_general).strip()
    if t in table:
        return table[t]
    folded = {k.casefold(): v for k, v in table.items()}
    return folded.get(t.casefold())


def organ_system(tissue_general: str, path: str | Path | None = None) -> str | None:
    """The (primary) organ system of a census tissue_general value; None when it has none."""
    return _lookup(_load(str(path or MAPPING_FILE))[0], tissue_general)


def organ_systems(tissue_general: str, grouping: str = "primary", path: str | Path | None = None) -> tuple[str, ...]:
    """Every organ system a tissue_general value belongs to under ``grouping`` (empty: none)."""
    if grouping not in GROUPINGS:
        raise ValueError(f"grouping must be one of {GROUPINGS}, got {grouping!r}")
    if grouping == "primary":
        s = organ_system(tissue_general, path)
        return (s,) if s else ()
    ref = _load(str(path or MAPPING_FILE))[2]
    t = str(tissue_general).strip().casefold()
    return tuple(o for o in ORGAN_SYSTEMS if t in {x.casefold() for x in ref.get(o, ())})


def f1_by_organ(y_true, y_pred, tissue_general_labels, child_matrix: np.ndarray, *, grouping: str = "primary",
                average_over: AverageOver = "truth", path: str | Path | None = None) -> dict[str, dict]:
    """Ontology-corrected macro F1 per organ system.

    ``tissue_general_labels``: one string per cell (decode store codes with ``store.lookup("tissue_general")``).
    Returns ``{system: {"f1_macro", "n_cells", "n_types", "accuracy"}}`` for the systems that have cells, in
    ``ORGAN_SYSTEMS`` order, then ``"other"`` when some cells belong to no system. ``n_types`` is the number
    of classes the macro average runs over (``average_over="truth"``: in the system's truth; ``"union"``: in
    its truth or predictions).
    """
    check_average_over(average_over)
    child_matrix = np.asarray(child_matrix)
    n_classes = child_matrix.shape[0]
    y_true = np.asarray(y_true).astype(np.int64, copy=False).ravel()
    pred = correct_predictions(y_true, y_pred, child_matrix)
    tissues = np.asarray(tissue_general_labels, dtype=object).ravel()
    if tissues.shape != y_true.shape:
        raise ValueError(f"{tissues.size} tissue labels for {y_true.size} cells")
    uniq, inverse = np.unique(tissues.astype(str), return_inverse=True)
    member = {t: organ_systems(t, grouping, path) for t in uniq}
    groups: dict[str, np.ndarray] = {}
    for system in ORGAN_SYSTEMS:
        codes = [i for i, t in enumerate(uniq) if system in member[t]]
        if codes:
            groups[system] = np.isin(inverse, codes)
    none = [i for i, t in enumerate(uniq) if not member[t]]
    if none:
        groups[OTHER] = np.isin(inverse, none)
    out = {}
    for system, mask in groups.items():
        if not mask.any():
            continue
        yt, yp = y_true[mask], pred[mask]
        cm = confusion(yt, yp, n_classes)
        macro = f1_from_confusion(cm, average_over=average_over)[0]
        out[system] = {"f1_macro": macro, "n_cells": int(mask.sum()),
                       "n_types": int(averaged_classes(cm, average_over=average_over).sum()),
                       "accuracy": float((yt == yp).mean())}
    return out
