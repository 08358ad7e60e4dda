"""Donor-wise train/val/test split and the nested training subsets of the paper's scaling experiments.

Donors (tech_sample = dataset_id + donor_id) are shuffled with a seed and cut 70/15/15. A split in
which some cell type is missing from val or test is useless for per-type evaluation, so the cut is
re-drawn with seed+1, seed+2, ... (deterministically) until every type is in every split.
Subsets of train (Methods, "Subsampled datasets") are incremental: the 30% set contains the 15% set.

``split.by: cell`` (for a reference with too few donors) cuts cells instead of donors: the report flags it as
leaky, since cells of one donor then sit in train and test and the test score is optimistic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from sctab.params_schema import section

SPLITS = ("train", "val", "test")


class SplitError(ValueError):
    """No split satisfies the constraints, or the split parameters are unusable."""


@dataclass
class Split:
    assignment: pd.DataFrame  # soma_joinid, tech_sample, cell_type, split
    subsets: dict[str, np.ndarray]  # "donors_15" -> sorted soma_joinids of train cells
    report: dict


def _fractions(params: dict) -> dict[str, float]:
    fr = section(params, "split.fractions")
    if set(fr) != set(SPLITS):
        raise SplitError(f"split.fractions must name exactly {SPLITS}, got {sorted(fr)}")
    total = sum(float(v) for v in fr.values())
    if not math.isclose(total, 1.0, abs_tol=1e-6) or min(fr.values()) <= 0:
        raise SplitError(f"split.fractions must be positive and sum to 1, got {fr}")
    return {k: float(fr[k]) for k in SPLITS}


def assign_donors(donors: np.ndarray, fractions: dict[str, float], rng: np.random.Generator) -> dict[str, str]:
    perm = rng.permutation(donors)
    n = len(perm)
    n_val = max(1, int(round(fractions["val"] * n)))
    n_test = max(1, int(round(fractions["test"] * n)))
    n_train = n - n_val - n_test
    if n_train < 1:
        raise SplitError(f"only {n} donors: too few for a train/val/test split")
    out = {d: "train" for d in perm[:n_train]}
    out.update({d: "val" for d in perm[n_train:n_train + n_val]})
    out.update({d: "test" for d in perm[n_train + n_val:]})
    return out


MIN_DONORS = 3  # one each for train, val and test
LEAKY = ("split.by is 'cell': cells of one donor sit in train, val and test, so the test score is optimistic "
         "(it does not measure generalisation to new donors)")


def _split_by(params: dict) -> str:
    by = section(params, "split.by")
    if by not in ("donor", "cell"):
        raise SplitError(f"split.by must be 'donor' or 'cell', got {by!r}")
    return by


def _too_few_donors(n: int, params: dict) -> SplitError:
    c = section(params, "census")
    where = (f"the inputs {', '.join(map(str, c.inputs))} (donors = census.donor_columns "
             f"{c.donor_columns})" if c.source == "h5ad"
             else "the extracted cells (donors = dataset_id + donor_id)")
    return SplitError(f"{n} donor(s) in {where}: a donor split into train/val/test needs at least {MIN_DONORS} "
                      f"(70/15/15 of the donors). Name another group column with census.donor_columns (e.g. a "
                      f"sample or lane column), or set split.by: cell (cells split at random; the report flags "
                      f"it as leaky)")


def split_cells(obs: pd.DataFrame, params: dict) -> Split:
    fractions = _fractions(params)
    sp = section(params, "split")
    seed, attempts = sp.seed, sp.max_attempts
    by = _split_by(params)
    group = obs["tech_sample"].astype(str) if by == "donor" else obs["soma_joinid"].astype(np.int64).astype(str)
    donors = np.array(sorted(group.unique()))
    if by == "donor" and len(donors) < MIN_DONORS:
        raise _too_few_donors(len(donors), params)
    cell_donor = group.to_numpy()
    types = obs["cell_type"].astype(str).to_numpy()
    all_types = set(types)
    worst = None
    for attempt in range(attempts):
        mapping = assign_donors(donors, fractions, np.random.default_rng(seed + attempt))
        split = pd.Series(cell_donor).map(mapping).to_numpy()
        missing = {s: sorted(all_types - set(types[split == s])) for s in SPLITS}
        n_missing = sum(len(v) for v in missing.values())
        if n_missing == 0:
            break
        if worst is None or n_missing < worst[0]:
            worst = (n_missing, missing)
    else:
        raise SplitError(
            f"no donor split within {attempts} attempts puts every cell type in train, val and test; "
            f"best attempt still misses {worst[1]}; raise filters.min_donors_per_type (types need donors in "
            f"every split) or split.max_attempts"
            + ("; with few donors, another census.donor_columns or split.by: cell (leaky) is the way out"
               if by == "donor" else ""))
    assignment = pd.DataFrame({
        "soma_joinid": obs["soma_joinid"].to_numpy(np.int64),
        "tech_sample": obs["tech_sample"].astype(str).to_numpy(),
        "cell_type": types,
        "split": split,
    })
    subsets = nested_subsets(assignment, sp.subsample_fractions, seed)
    donors_per = {s: int(sum(1 for v in mapping.values() if v == s)) for s in SPLITS}
    if by == "cell":  # the groups were cells; count the real donors per split
        donors_per = {s: int(assignment.loc[assignment["split"] == s, "tech_sample"].nunique()) for s in SPLITS}
    report = {
        "seed": seed, "attempt": attempt, "effective_seed": seed + attempt,
        "donors": donors_per,
        "donor_fractions": {s: round(donors_per[s] / (len(donors) if by == "donor" else
                                                      max(1, sum(donors_per.values()))), 4) for s in SPLITS},
        "cells": {s: int((split == s).sum()) for s in SPLITS},
        "cell_types": len(all_types),
        "subsets": {k: int(len(v)) for k, v in subsets.items()},
    }
    if by == "cell":
        report.update(by="cell", leaky=LEAKY)
    return Split(assignment=assignment, subsets=subsets, report=report)


def nested_subsets(assignment: pd.DataFrame, fractions, seed: int) -> dict[str, np.ndarray]:
    """Incremental donor- and cell-subsamples of train: each smaller set is contained in the larger."""
    fractions = sorted(float(f) for f in fractions)
    if not fractions or fractions[0] <= 0 or fractions[-1] > 1:
        raise SplitError(f"split.subsample_fractions must lie in (0, 1], got {fractions}")
    train = assignment[assignment["split"] == "train"]
    rng = np.random.default_rng([seed, 7])
    donors = rng.permutation(np.array(sorted(train["tech_sample"].unique())))
    cells = rng.permutation(train["soma_joinid"].to_numpy())
    out = {}
    for f in fractions:
        pct = int(round(f * 100))
        take = set(donors[: max(1, int(math.ceil(f * len(donors))))])
        out[f"donors_{pct}"] = np.sort(train.loc[train["tech_sample"].isin(take), "soma_joinid"].to_numpy())
        out[f"cells_{pct}"] = np.sort(cells[: max(1, int(round(f * len(cells))))])
    return out
