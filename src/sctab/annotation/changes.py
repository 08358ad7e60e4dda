"""``--compare-with MODEL``: how the labels of one model change against another's on the same cells.

Why a module of its own: before a new version replaces ``@champion`` a user wants to know what it would
change on their own data, and "the label text differs" says too little. A new model that calls a "T cell"
"CD4-positive, alpha-beta T cell" refines the old answer; one that calls it a B cell contradicts it. Each
cell's change is read in the Cell Ontology (the same :class:`sctab.ontology.CellOntology` queries as
:mod:`sctab.annotation.compare`), from the previous label's CL id to the new one's (each model's class list
gives the ids), in this order:

- ``same``: the same CL id (two cells both left ``Unassigned`` are the same too);
- ``finer``: the new type is a descendant of the previous one;
- ``coarser``: the new type is an ancestor of the previous one;
- ``sibling``: they share a direct parent;
- ``other``: anything else, a cell that only one model left ``Unassigned`` included.

The summary counts cells by (previous label, new label) pair, largest first; its totals add up to the cells.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from sctab.annotation.errors import AnnotateError

SAME = "same"
FINER = "finer"
COARSER = "coarser"
SIBLING = "sibling"
OTHER = "other"
CHANGES = (SAME, FINER, COARSER, SIBLING, OTHER)
PRINTED_ROWS = 40  # label pairs printed on the terminal; the .md file has them all


def relation(first: str, second: str, ontology) -> str | None:
    """How CL id ``second`` stands to ``first`` in the ontology: SAME, FINER (a descendant), COARSER (an
    ancestor), SIBLING (a shared direct parent), or None. The one rule behind --compare-with's changes and
    --compare-labels' agreement values."""
    if first == second:
        return SAME
    if first in ontology.ancestors(second):
        return FINER
    if second in ontology.ancestors(first):
        return COARSER
    if ontology.parents(first) & ontology.parents(second):
        return SIBLING
    return None


def classify_change(previous: str, new: str, ontology) -> str:
    """The change from CL id ``previous`` to CL id ``new`` (empty: unassigned)."""
    if previous == new:
        return SAME
    if not previous or not new:
        return OTHER
    return relation(previous, new, ontology) or OTHER


def check_classes(ontology, models: dict[str, list[str]]) -> None:
    """Every class of every model must be a term of ``ontology``; AnnotateError naming the first that is not."""
    for name, ids in models.items():
        absent = [c for c in ids if c not in ontology]
        if absent:
            raise AnnotateError(f"--compare-with: the Cell Ontology {ontology.path} ({ontology.version}) lacks "
                                f"{len(absent)} of the classes of {name}, e.g. {absent[:3]}; give the release the "
                                f"models were built with via --ontology")


@dataclass
class Changes:
    """Per cell the change, per (previous, new) label pair a row, and the totals per change."""

    previous_model: str
    new_model: str
    change: pd.Series                    # per cell
    table: pd.DataFrame                  # previous_label, previous_id, new_label, new_id, change, cells, share
    totals: dict[str, int] = field(default_factory=dict)

    @property
    def n_cells(self) -> int:
        return int(len(self.change))

    def as_dict(self) -> dict:
        return {"previous_model": self.previous_model, "new_model": self.new_model, "n_cells": self.n_cells,
                "totals": self.totals, "shares": self.shares(), "pairs": self.table.to_dict(orient="records")}

    def shares(self) -> dict[str, float]:
        return {k: round(v / max(self.n_cells, 1), 4) for k, v in self.totals.items()}

    def as_uns(self) -> dict:
        """What ``uns['<key>_changes']`` holds (h5ad stores no None: the table's ids are plain strings)."""
        table = self.table.copy()
        table.index = table.index.astype(str)
        return {"previous_model": self.previous_model, "new_model": self.new_model, "n_cells": self.n_cells,
                "totals": {k: int(v) for k, v in self.totals.items()}, "table": table}

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), indent=2)

    def to_markdown(self, max_rows: int | None = None) -> str:
        """The summary as a Markdown table; ``max_rows`` keeps the largest pairs (the totals cover all cells)."""
        head = ["previous label", "new label", "change", "cells", "share"]
        lines = [f"# Labels of {self.new_model} against {self.previous_model}", "",
                 "| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
        rows = self.table if max_rows is None else self.table.head(max_rows)
        for r in rows.itertuples(index=False):
            lines.append(f"| {r.previous_label} | {r.new_label} | {r.change} | {r.cells:,} | {_pct(r.share)} |")
        if len(rows) < len(self.table):
            rest = self.table.iloc[len(rows):]
            lines.append(f"| ... {len(rest):,} more pairs | | | {int(rest['cells'].sum()):,} | "
                         f"{_pct(rest['cells'].sum() / max(self.n_cells, 1))} |")
        overall = ", ".join(f"{k} {v:,} ({_pct(v / max(self.n_cells, 1))})" for k, v in self.totals.items())
        lines += ["", f"All {self.n_cells:,} cells: {overall}."]
        return "\n".join(lines) + "\n"


def compare_models(previous: pd.DataFrame, new: pd.DataFrame, ontology, *, previous_model: str,
                   new_model: str) -> Changes:
    """The changes from the ``previous`` model's per-cell frame to the ``new`` one's (columns ``label`` and
    ``cell_type_ontology_term_id``, same cells in the same order); each distinct pair is classified once."""
    if len(previous) != len(new):
        raise AnnotateError(f"{len(previous)} previous labels but {len(new)} new ones")
    pairs = pd.DataFrame({
        "previous_label": previous["label"].astype(str).to_numpy(),
        "previous_id": previous["cell_type_ontology_term_id"].astype(object).fillna("").astype(str).to_numpy(),
        "new_label": new["label"].astype(str).to_numpy(),
        "new_id": new["cell_type_ontology_term_id"].astype(object).fillna("").astype(str).to_numpy()})
    keys = ["previous_label", "previous_id", "new_label", "new_id"]
    grouped = pairs.groupby(keys, sort=False)  # groups numbered in order of appearance, as size() lists them
    table = grouped.size().rename("cells").reset_index()
    kinds = np.array([classify_change(p, n, ontology) for p, n in zip(table["previous_id"], table["new_id"])],
                     dtype=object)
    table["change"] = kinds
    per_cell = pd.Series(kinds[grouped.ngroup().to_numpy()] if len(pairs) else [], dtype=object)
    table["share"] = table["cells"] / max(len(pairs), 1)
    table = table.sort_values(["cells", "previous_label", "new_label"], ascending=[False, True, True],
                              kind="stable").reset_index(drop=True)
    table = table[["previous_label", "previous_id", "new_label", "new_id", "change", "cells", "share"]]
    table["cells"] = table["cells"].astype(np.int64)
    counts = per_cell.value_counts()
    totals = {k: int(counts.get(k, 0)) for k in CHANGES}
    return Changes(previous_model=previous_model, new_model=new_model,
                   change=per_cell, table=table, totals=totals)


def _pct(share: float) -> str:
    return "<1%" if 0 < share < 0.005 else f"{share:.0%}"


def changes_paths(output: str | os.PathLike) -> tuple[Path, Path]:
    """``<OUT stem>.changes.json`` and ``.changes.md`` beside the annotated output."""
    out = Path(output)
    stem = out.with_suffix("")
    return stem.with_name(stem.name + ".changes.json"), stem.with_name(stem.name + ".changes.md")
