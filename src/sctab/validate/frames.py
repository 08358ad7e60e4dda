"""Small aggregate frames that the suites check.

Great Expectations checks rows of one table. Most of the pipeline's rules are about groups (a cell
type, a donor, a split), so each rule gets a frame with one row per group and a column per
quantity; a violating row then names the group (the rare cell type, the leaked donor) directly.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd


def _safe(fn, term: str) -> Any:
    """Ask the ontology; an unknown term gives None instead of an exception (reported separately)."""
    try:
        return fn(term)
    except (KeyError, ValueError, LookupError):
        return None


def effective_root(ontology, root_term: str) -> str:
    """The root term to test against; an obsolete root is followed to its replacement.

    Newer CL releases made CL:0000003 ("native cell") obsolete (replaced by CL:0000000); its
    descendants are then empty and every type would look "not native". The filter stage follows
    the replacement too, so the check does the same (only when the ontology can tell us).
    """
    descendants = _safe(ontology.descendants, root_term)
    if descendants:
        return root_term
    replaced_by = getattr(ontology, "replaced_by", None)
    if callable(replaced_by):
        new = _safe(replaced_by, root_term)
        if new:
            return new
    return root_term


def cell_type_frame(obs: pd.DataFrame, ontology, root_term: str) -> pd.DataFrame:
    """One row per cell type of ``obs``: cells, donors (tech_sample), ancestors, under the root?

    ``n_ancestors`` and ``under_root`` are missing (NaN/None) for terms the ontology does not know;
    GX skips missing values, so such a type fails only ``in_ontology`` (one clear message).
    """
    root = effective_root(ontology, root_term)
    under = (_safe(ontology.descendants, root) or frozenset()) | {root}
    g = obs.groupby(["cell_type", "cell_type_ontology_term_id"], observed=True, sort=True)
    frame = g.agg(n_cells=("soma_joinid", "size"), n_donors=("tech_sample", "nunique")).reset_index()
    known, n_anc, is_under = [], [], []
    for term in frame["cell_type_ontology_term_id"]:
        n = _safe(ontology.n_ancestors, term)
        known.append(n is not None)
        n_anc.append(np.nan if n is None else float(n))
        is_under.append(None if n is None else term in under)
    frame["in_ontology"] = known
    frame["n_ancestors"] = np.asarray(n_anc, dtype=float)
    frame["under_root"] = pd.Series(is_under, dtype=object)
    frame.attrs["root_term"] = root
    return frame


def donor_split_frame(assignment: pd.DataFrame) -> pd.DataFrame:
    """One row per tech_sample (the paper's donor): in how many splits, and which."""
    g = assignment.groupby("tech_sample", observed=True, sort=True)["split"]
    frame = g.agg(n_splits="nunique", splits=lambda s: " and ".join(sorted(map(str, s.unique()))))
    return frame.reset_index()


def split_fraction_frame(assignment: pd.DataFrame, fractions: Mapping[str, float]) -> pd.DataFrame:
    """One row per split: donors in it, their fraction of all donors, the target, the deviation.

    Unknown split names get a row too (``known`` False) so that they are reported by name.
    """
    donors = assignment.groupby("split", observed=True)["tech_sample"].nunique()
    total = assignment["tech_sample"].nunique()
    names = list(fractions) + sorted(str(s) for s in donors.index if s not in fractions)
    rows = []
    for name in names:
        n = int(donors.get(name, 0))
        frac = n / total if total else 0.0
        target = fractions.get(name)
        rows.append(
            {
                "split": name,
                "known": name in fractions,
                "n_donors": n,
                "fraction": frac,
                "target": np.nan if target is None else float(target),
                "deviation": np.nan if target is None else abs(frac - float(target)),
            }
        )
    return pd.DataFrame(rows)


def cell_type_split_frame(
    assignment: pd.DataFrame, splits: Sequence[str], obs: pd.DataFrame | None = None
) -> pd.DataFrame:
    """One row per cell type: its number of cells in each split (``n_cells_<split>``).

    Types of ``obs`` that never made it into the assignment get zeros, so they are reported too.
    """
    counts = pd.crosstab(assignment["cell_type"], assignment["split"])
    types = set(counts.index)
    if obs is not None:
        types |= set(obs["cell_type"].unique())
    counts = counts.reindex(index=sorted(types, key=str), columns=list(splits), fill_value=0)
    frame = pd.DataFrame({"cell_type": counts.index.astype(str)})
    for s in splits:
        frame[f"n_cells_{s}"] = counts[s].to_numpy(dtype=np.int64)
    return frame


def assignment_coverage_frame(obs: pd.DataFrame, assignment: pd.DataFrame) -> pd.DataFrame:
    """One row per soma_joinid of obs or the assignment: times assigned, and whether it is in obs."""
    assigned = assignment["soma_joinid"].value_counts()
    ids = pd.Index(obs["soma_joinid"].unique()).union(pd.Index(assigned.index))
    frame = pd.DataFrame({"soma_joinid": ids.to_numpy()})
    frame["n_assigned"] = assigned.reindex(ids, fill_value=0).to_numpy(dtype=np.int64)
    frame["in_obs"] = ids.isin(obs["soma_joinid"])
    return frame


def split_row_counts(assignment: pd.DataFrame) -> dict[str, int]:
    """Rows the store should hold per split when nothing was truncated."""
    return {str(k): int(v) for k, v in assignment["split"].value_counts().items()}
