"""``--compare-labels COLUMN``: a file's own labels set against the model's predictions through the Cell Ontology.

Why a module of its own: a user's labels rarely sit at the model's level. A lab that wrote "T cell" is not
contradicted by a model that says "CD4-positive, alpha-beta T cell" (the paper counts a prediction below the
true label as right), and a model cannot be blamed for missing a type it never learned. Comparing label text
would call both disagreements; this module says, per cell, how the prediction relates to the user's label in
the ontology, and per user label how that label relates to the model's classes, with the paper's
ontology-corrected F1 over the labels the model can get right.

The user's labels become Cell Ontology ids as the h5ad reference source maps them
(:func:`sctab.census.h5ad.map_labels`: CL ids stay, free text by CL label or exact synonym, a label map for
the rest); the relations are the project's ontology queries (:class:`sctab.ontology.CellOntology`, pronto).

Agreement of one cell (``<key>_agreement``), in the order they are decided:

- ``label not mapped``: the user's label maps to no CL term;
- ``not in the model``: the user's type is neither a model class nor an ancestor or descendant of one;
- ``unassigned``: the model gave the cell no label (no counts, or below the minimum probability);
- ``exact``: the prediction is the user's type;
- ``model finer``: the prediction is a descendant of the user's type (agreement in the paper's sense);
- ``model coarser``: the prediction is an ancestor of the user's type;
- ``sibling``: prediction and user's type share a parent;
- ``disagree``: anything else.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from sctab.annotation import changes
from sctab.annotation.errors import AnnotateError

NOT_MAPPED = "label not mapped"
NOT_IN_MODEL = "not in the model"
UNASSIGNED = "unassigned"
EXACT = "exact"
FINER = "model finer"
COARSER = "model coarser"
SIBLING = "sibling"
DISAGREE = "disagree"
AGREEMENT = (EXACT, FINER, COARSER, SIBLING, DISAGREE, UNASSIGNED, NOT_IN_MODEL, NOT_MAPPED)
AVERAGE_OVER = "truth"  # over the user's types the model covers (docs/evaluation-rules.md names both rules)
TOP_PREDICTED = 3
log = logging.getLogger(__name__)


def read_label_map(label_map) -> dict[str, str]:
    """``--label-map``: a dict, or a YAML file of label: CL id (``unknown`` leaves a label unmapped), read by the
    h5ad reference source's reader."""
    from sctab.census.h5ad import read_label_map as read_yaml
    from sctab.config import ConfigError

    if label_map is None:
        return {}
    if isinstance(label_map, dict):
        from sctab.census.h5ad import CL_ID, UNKNOWN

        bad = {k: v for k, v in label_map.items() if not (isinstance(v, str) and (CL_ID.match(v) or v == UNKNOWN))}
        if bad:
            raise AnnotateError(f"label_map maps labels to values that are not CL ids (CL:0000000) or 'unknown': "
                                f"{dict(list(bad.items())[:5])}")
        return {str(k): v for k, v in label_map.items()}
    try:
        return read_yaml(label_map)
    except ConfigError as e:
        raise AnnotateError(str(e).replace("census.label_map", "--label-map")) from e


def load_ontology(ontology, bundle_version: str | None = None):
    """The whole Cell Ontology the comparison needs (the model bundle keeps only its classes' ancestors).

    ``ontology``: a loaded :class:`CellOntology`, or an OBO path that exists; otherwise the release the model
    was built with (``bundle_version``), written from the copy bundled with cellxgene-ontology-guide."""
    from sctab.ontology import CellOntology, bundled_cl_versions, load_cell_ontology, write_cl_obo

    if isinstance(ontology, CellOntology):
        return ontology
    if ontology is not None and Path(ontology).is_file():
        return load_cell_ontology(ontology)
    if bundle_version and bundle_version in bundled_cl_versions():
        log.info("no Cell Ontology file at %s: using the model's release %s from cellxgene-ontology-guide",
                 ontology, bundle_version)
        with tempfile.TemporaryDirectory(prefix="sctab-cl-") as tmp:
            return CellOntology.from_obo(write_cl_obo(bundle_version, Path(tmp) / "cl.obo"))
    raise AnnotateError(f"comparing labels needs the Cell Ontology: {ontology} does not exist and the model names "
                        f"no bundled release ({bundle_version!r}); give an OBO file with --ontology")


@dataclass
class UserLabels:
    """A label column mapped to CL ids: per cell the id (None: not mapped), per distinct text its id."""

    column: str
    text: pd.Series                  # per cell, as str
    ids: pd.Series                   # per cell, CL id or None
    mapping: dict[str, str | None]   # distinct text -> id


def map_user_labels(values, ontology, label_map: dict[str, str] | None = None, *, column: str = "labels",
                    where: str = "the input") -> UserLabels:
    """CL ids of a user's label column, by the h5ad reference source's rules; an obsolete id follows its
    replacement. AnnotateError when no label maps at all (nothing to compare)."""
    from sctab.census.h5ad import UNKNOWN, map_labels

    raw = pd.Series(values)
    text = raw.astype(object).where(raw.notna(), "").astype(str).reset_index(drop=True)
    ids, _ = map_labels(text, ontology, label_map or {})
    mapping: dict[str, str | None] = {}
    for t, i in zip(text, ids):
        if t in mapping:
            continue
        if not isinstance(i, str) or i == UNKNOWN or i not in ontology:
            mapping[t] = None
        elif ontology.is_obsolete(i):
            mapping[t] = ontology.replaced_by(i)
        else:
            mapping[t] = i
    if not any(mapping.values()):
        shown = ", ".join(repr(t) for t in list(mapping)[:8]) + (", ..." if len(mapping) > 8 else "")
        raise AnnotateError(f"--compare-labels: none of the {len(mapping)} label(s) in obs column {column!r} of "
                            f"{where} maps to a Cell Ontology term ({shown}); give CL ids, CL labels or exact "
                            f"synonyms, or map them with --label-map (a YAML file of label: CL id)")
    return UserLabels(column=column, text=text, ids=text.map(mapping), mapping=mapping)


def relation_to_model(term: str | None, class_ids: list[str], ontology) -> tuple[str, list[str]]:
    """How a user's type relates to the model's classes: ("a class" | "above k classes" | "below a class" |
    "absent" | "not mapped", the classes concerned: itself, the ones below it, or the nearest one above it)."""
    if term is None:
        return "not mapped", []
    if term in class_ids:
        return "a class", [term]
    below = [c for c in class_ids if term in ontology.ancestors(c)]
    if below:
        return f"above {len(below)} class{'es' if len(below) > 1 else ''}", below
    above = [c for c in class_ids if c in ontology.ancestors(term)]
    if above:
        nearest = max(above, key=lambda c: (ontology.n_ancestors(c), c))
        return "below a class", [nearest]
    return "absent", []


def agreement(term: str | None, predicted: str, relation: str, ontology) -> str:
    """The agreement value of one cell: user's type ``term`` (None: not mapped), predicted class id
    (empty: unassigned), the label's ``relation`` to the model's classes."""
    if term is None:
        return NOT_MAPPED
    if relation == "absent":
        return NOT_IN_MODEL
    if not predicted:
        return UNASSIGNED
    step = changes.relation(term, predicted, ontology)
    return {changes.SAME: EXACT, changes.FINER: FINER, changes.COARSER: COARSER,
            changes.SIBLING: SIBLING}.get(step, DISAGREE)


def covered(relation: str) -> bool:
    """Labels the model can get right in the paper's sense: a class, or above classes (a finer prediction)."""
    return relation == "a class" or relation.startswith("above ")


def corrected_f1(truth: list[str], predicted: list[str], ontology) -> tuple[float, dict[str, float], list[str]]:
    """The paper's ontology-corrected F1 of cells with user types ``truth`` (each a type the model covers) and
    predicted class ids (empty: unassigned).

    A prediction equal to or below the cell's own type counts as that type (the paper's correction). Any other
    prediction is read in the user's vocabulary too: as the most specific of the user's types it equals or lies
    below (a macrophage call is a false "myeloid leukocyte" when the user labels at that level), else as itself.
    Macro F1 over the user's types (the labels the model covers): a class the model predicts but the user never
    wrote is no label of the average, whatever its errors cost the user's types. An unassigned cell is a miss.
    Returns (macro F1, F1 per user type, the types averaged over)."""
    from sctab.evaluate.metrics import confusion, f1_from_confusion

    vocabulary = sorted(set(truth))
    read: dict[str, str] = {}
    for p in set(predicted):
        above = [v for v in vocabulary if p and (v == p or v in ontology.ancestors(p))]
        read[p] = max(above, key=lambda v: (ontology.n_ancestors(v), v)) if above else p
    corrected = [t if p and (p == t or t in ontology.ancestors(p)) else read[p] for t, p in zip(truth, predicted)]
    names = vocabulary + sorted({p for p in corrected if p not in vocabulary})
    code = {n: i for i, n in enumerate(names)}
    cm = confusion([code[t] for t in truth], [code[p] for p in corrected], len(names))
    _, f1, _ = f1_from_confusion(cm, average_over=AVERAGE_OVER)
    per = {t: float(f1[code[t]]) for t in vocabulary}
    return float(np.mean(list(per.values()))), per, vocabulary


@dataclass
class Comparison:
    """The result: per cell the agreement, per user label a row, overall shares and the corrected F1."""

    column: str
    agreement: pd.Series
    table: pd.DataFrame
    shares: dict[str, float]
    f1_macro: float
    f1_labels: list[str]
    class_ids: list[str] = field(repr=False, default_factory=list)
    class_labels: list[str] = field(repr=False, default_factory=list)

    def as_dict(self) -> dict:
        rows = []
        for r in self.table.to_dict(orient="records"):
            rows.append({**r, "f1": None if pd.isna(r["f1"]) else r["f1"]})
        return {"column": self.column, "n_cells": int(len(self.agreement)), "agreement": self.shares,
                "f1_macro": None if np.isnan(self.f1_macro) else self.f1_macro, "average_over": AVERAGE_OVER,
                "f1_rule": "ontology-corrected (a prediction equal to or below the cell's type counts as it; other "
                           "predictions read as the user's type they lie below, else as themselves), macro over "
                           "the user's types the model covers",
                "f1_labels": self.f1_labels, "labels": rows}

    def flat_table(self) -> pd.DataFrame:
        """The per-label table with plain columns (one per agreement value), as h5ad's uns can store it."""
        t = self.table
        out = pd.DataFrame({"label": t["label"].astype(str), "cells": t["cells"].astype(np.int64),
                            "cl_id": t["cl_id"].fillna("").astype(str),
                            "cl_label": t["cl_label"].fillna("").astype(str), "relation": t["relation"].astype(str),
                            "classes": [";".join(c) for c in t["classes"]]})
        for k in AGREEMENT:
            out[k] = [a[k] for a in t["agreement"]]
        out["top_predicted"] = ["; ".join(f"{k} {v:.0%}" for k, v in d.items()) for d in t["top_predicted"]]
        out["f1"] = t["f1"].astype(np.float64)
        out.index = out.index.astype(str)
        return out

    def as_uns(self) -> dict:
        """What ``uns['<key>_compare']`` holds: the summary and the per-label table as a DataFrame."""
        return {"column": self.column, "n_cells": int(len(self.agreement)), "agreement": self.shares,
                "f1_macro": float(self.f1_macro), "average_over": AVERAGE_OVER,
                "f1_labels": np.asarray(self.f1_labels, dtype=str), "table": self.flat_table()}

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), indent=2)

    def to_markdown(self) -> str:
        head = ["label", "cells", "CL id", "relation to the model", "agreement", "top predicted", "F1"]
        lines = [f"# Labels of obs column `{self.column}` against the model's predictions", "",
                 "| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
        labels = dict(zip(self.class_ids, self.class_labels))
        for r in self.table.itertuples(index=False):
            shares = ", ".join(f"{k} {_pct(v)}" for k, v in r.agreement.items() if v > 0)
            top = ", ".join(f"{k} {_pct(v)}" for k, v in r.top_predicted.items())
            f1 = "" if pd.isna(r.f1) else f"{r.f1:.3f}"
            cl = r.cl_id or ""
            if r.cl_label and r.cl_label != r.label:
                cl += f" ({r.cl_label})"
            rel = r.relation + (f": {labels.get(r.classes[0], r.classes[0])}" if r.relation == "below a class" else "")
            lines.append(f"| {r.label} | {r.cells:,} | {cl} | {rel} | {shares} | {top} | {f1} |")
        overall = ", ".join(f"{k} {_pct(v, 1)}" for k, v in self.shares.items() if v > 0)
        f1 = "n/a (no label the model covers)" if np.isnan(self.f1_macro) else f"{self.f1_macro:.3f}"
        lines += ["", f"All {len(self.agreement):,} cells: {overall}.",
                  f"Ontology-corrected macro F1 over the {len(self.f1_labels)} label type(s) the model covers "
                  f"(a prediction equal to or below the label counts as it, the paper's rule): {f1}."]
        return "\n".join(lines) + "\n"


def compare(user: UserLabels, predicted_ids, predicted_labels, class_ids: list[str], ontology,
            class_labels: list[str] | None = None) -> Comparison:
    """Reconcile mapped user labels with per-cell predictions (class ids; empty = unassigned); ``class_labels``
    are the model's names of its classes (default: their CL labels)."""
    pred_id = pd.Series(predicted_ids).astype(object).fillna("").astype(str).reset_index(drop=True)
    pred_label = pd.Series(predicted_labels).astype(str).reset_index(drop=True)
    if len(pred_id) != len(user.text):
        raise AnnotateError(f"{len(user.text)} user labels but {len(pred_id)} predictions")
    relations = {t: relation_to_model(i, class_ids, ontology) for t, i in user.mapping.items()}
    memo: dict[tuple, str] = {}
    values = []
    for t, p in zip(user.text, pred_id):
        key = (t, p)
        if key not in memo:
            memo[key] = agreement(user.mapping[t], p, relations[t][0], ontology)
        values.append(memo[key])
    agree = pd.Series(values, dtype=object)
    cover = [covered(relations[t][0]) for t in user.text]
    mask = np.asarray(cover, dtype=bool)
    macro, per_id, f1_labels = float("nan"), {}, []
    if mask.any():
        macro, per_id, f1_labels = corrected_f1(user.ids[mask].tolist(), pred_id[mask].tolist(), ontology)
    rows = []
    for t, cells in user.text.value_counts(sort=True).items():
        sel = (user.text == t).to_numpy()
        term = user.mapping[t]
        rel = relations[t][0]
        counts = agree[sel].value_counts()
        top = pred_label[sel].value_counts().head(TOP_PREDICTED)
        rows.append({"label": t, "cells": int(cells), "cl_id": term,
                     "cl_label": ontology.label(term) if term else None, "relation": rel,
                     "classes": relations[t][1],
                     "agreement": {k: round(float(counts.get(k, 0)) / cells, 4) for k in AGREEMENT},
                     "top_predicted": {k: round(float(v) / cells, 4) for k, v in top.items()},
                     "f1": per_id.get(term, float("nan")) if covered(rel) else float("nan")})
    total = agree.value_counts()
    shares = {k: round(float(total.get(k, 0)) / max(len(agree), 1), 4) for k in AGREEMENT}
    return Comparison(column=user.column, agreement=agree, table=pd.DataFrame(rows), shares=shares,
                      f1_macro=macro, f1_labels=f1_labels, class_ids=list(class_ids),
                      class_labels=list(class_labels) if class_labels is not None
                      else [ontology.label(c) for c in class_ids])


def _pct(share: float, digits: int = 0) -> str:
    """A share as a percentage; one too small to show at that precision reads "<1%" (or "<0.1%")."""
    floor = 10.0 ** -(digits + 2)
    return f"<{floor:.{digits}%}" if 0 < share < floor / 2 else f"{share:.{digits}%}"


def compare_paths(output: str | os.PathLike) -> tuple[Path, Path]:
    """``<OUT stem>.compare.json`` and ``.compare.md`` beside the annotated output."""
    out = Path(output)
    stem = out.with_suffix("")
    return stem.with_name(stem.name + ".compare.json"), stem.with_name(stem.name + ".compare.md")
