"""The paper's six cell filters (Methods, "Dataset preparation"), each a parameter, each reported.

Order: primary data -> 10x assays -> subtypes of the root term ("native cell") -> >= min ontology
ancestors -> >= min cells per type -> >= min donors per type. Donor = dataset_id + "_" + donor_id
(`tech_sample`), as in the scTab reference.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import pandas as pd

from sctab.params_schema import section

log = logging.getLogger(__name__)


class FilterError(ValueError):
    """The filters leave nothing to train on, or their parameters are unusable."""


@dataclass(frozen=True)
class FilterParams:
    primary_only: bool
    assays: tuple[str, ...]
    root_term: str
    min_ancestors: int
    min_cells_per_type: int
    min_donors_per_type: int

    @classmethod
    def from_params(cls, params: dict) -> "FilterParams":
        f = section(params, "filters")
        return cls(primary_only=f.primary_only, assays=tuple(f.assays), root_term=f.root_term,
                   min_ancestors=f.min_ancestors, min_cells_per_type=f.min_cells_per_type,
                   min_donors_per_type=f.min_donors_per_type)


def add_tech_sample(obs: pd.DataFrame) -> pd.DataFrame:
    """The reference's donor key: dataset_id + '_' + donor_id."""
    obs["tech_sample"] = (obs["dataset_id"].astype(str) + "_" + obs["donor_id"].astype(str)).astype("category")
    return obs


def obs_counts(obs: pd.DataFrame) -> dict:
    """Cells, cell types and donors of ``obs``: the before/after numbers of each filter's report row."""
    return {"cells": int(len(obs)), "cell_types": int(obs["cell_type_ontology_term_id"].nunique()),
            "donors": int(obs["tech_sample"].nunique()) if "tech_sample" in obs else None}


def resolve_root(ontology, root: str) -> tuple[str, str | None]:
    """Follow `replaced_by` when the root term is obsolete (CL:0000003 'native cell' is, since 2023)."""
    if root not in ontology:
        raise FilterError(f"filters.root_term {root!r} is not a term of Cell Ontology {ontology.version}")
    if ontology.is_obsolete(root):
        new = ontology.replaced_by(root)
        if not new or new not in ontology:
            raise FilterError(f"filters.root_term {root!r} is obsolete in CL {ontology.version} with no replacement")
        note = (f"{root} is obsolete in CL {ontology.version}; using its replacement {new} "
                f"({ontology.label(new)!r}) as the root of the native-cell filter")
        log.warning(note)
        return new, note
    return root, None


def type_level_filters(obs: pd.DataFrame, fp: FilterParams, ontology) -> tuple[pd.DataFrame, list[dict], list[str]]:
    """Filters 3-6, which look at cell types rather than single cells. Returns kept obs, steps, notes."""
    steps, notes = [], []
    root, note = resolve_root(ontology, fp.root_term)
    if note:
        notes.append(note)

    def step(name: str, keep_mask, removed_types) -> None:
        nonlocal obs
        before = obs_counts(obs)
        obs = obs.loc[keep_mask].copy()
        steps.append({"filter": name, "before": before, "after": obs_counts(obs),
                      "removed_types": sorted(str(t) for t in removed_types)})

    terms = obs["cell_type_ontology_term_id"].astype(str)
    uniq = pd.unique(terms)
    native = {t for t in uniq if t in ontology and not ontology.is_obsolete(t) and ontology.is_subtype(t, root)}
    step(f"subtype of {fp.root_term}", terms.isin(native).to_numpy(), set(uniq) - native)

    terms = obs["cell_type_ontology_term_id"].astype(str)
    n_anc = {t: ontology.n_ancestors(t) for t in pd.unique(terms)}
    broad = {t for t, n in n_anc.items() if n < fp.min_ancestors}
    step(f">= {fp.min_ancestors} ontology ancestors", (~terms.isin(broad)).to_numpy(), broad)

    per_type = obs.groupby("cell_type_ontology_term_id", observed=True).size()
    rare = set(per_type.index[per_type < fp.min_cells_per_type])
    step(f">= {fp.min_cells_per_type} cells per type",
         (~obs["cell_type_ontology_term_id"].isin(rare)).to_numpy(), rare)

    donors = obs.groupby("cell_type_ontology_term_id", observed=True)["tech_sample"].nunique()
    few = set(donors.index[donors < fp.min_donors_per_type])
    step(f">= {fp.min_donors_per_type} donors per type",
         (~obs["cell_type_ontology_term_id"].isin(few)).to_numpy(), few)

    if obs.empty or obs["cell_type_ontology_term_id"].nunique() < 2:
        raise FilterError(
            "the filters leave {} cell type(s) ({} cells); a classifier needs at least 2. Steps: {}".format(
                obs["cell_type_ontology_term_id"].nunique(), len(obs),
                "; ".join(f"{s['filter']}: {s['before']['cell_types']}->{s['after']['cell_types']} types"
                          for s in steps)))
    for c in obs.columns:
        if isinstance(obs[c].dtype, pd.CategoricalDtype):
            obs[c] = obs[c].cat.remove_unused_categories()
    return obs, steps, notes
