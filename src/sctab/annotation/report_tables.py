"""The report page's numbers, from the annotated output's obs: how the cells were labelled (class level,
coarser, "Unassigned"), the most frequent coarse labels, and the dot plot's clusters x labels table.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from sctab.annotation.annotator import UNASSIGNED

MAX_DOT_ROWS = 60             # clusters shown in the dot plot (the largest)
MAX_DOT_COLUMNS = 40          # predicted labels shown in the dot plot (the most frequent)


def label_shares(obs: pd.DataFrame, key_added: str, min_probability: float | None = None) -> pd.DataFrame:
    """Cells by how they were labelled, from obs ``<key>_label``, ``_cell_type_ontology_term_id``,
    ``_coarse_ontology_term_id`` and ``_probability``: a coarse label is one moved to an ontology ancestor
    (coarse id differs from the class id, uncertainty above the threshold)."""
    k = key_added
    label = obs[f"{k}_label"].astype(str).to_numpy()
    cid = obs[f"{k}_cell_type_ontology_term_id"].astype(object).fillna("").astype(str).to_numpy()
    coarse = obs[f"{k}_coarse_ontology_term_id"].astype(object).fillna("").astype(str).to_numpy()
    no_counts = obs[f"{k}_probability"].isna().to_numpy()
    unassigned = (label == UNASSIGNED) & ~no_counts
    moved = (label != UNASSIGNED) & (coarse != cid) & ~no_counts
    floor = "" if min_probability is None else f" {min_probability:g}"
    rows = [("labelled at the class level", ~(unassigned | moved | no_counts)),
            ("labelled, and given a coarser label (an ontology ancestor) for its uncertainty", moved),
            (f"'{UNASSIGNED}': below the minimum probability{floor} (a coarse label still given)", unassigned),
            (f"'{UNASSIGNED}': no counts on the model's genes", no_counts)]
    n = max(len(label), 1)
    return pd.DataFrame({"cells": [int(m.sum()) for _, m in rows],
                         "share": [f"{m.sum() / n:.1%}" for _, m in rows]}, index=[r for r, _ in rows])


def coarse_labels(obs: pd.DataFrame, key_added: str, top: int = 10) -> pd.DataFrame:
    """The most frequent coarse labels of the cells that got one (what those cells surely are)."""
    k = key_added
    cid = obs[f"{k}_cell_type_ontology_term_id"].astype(object).fillna("").astype(str)
    coarse = obs[f"{k}_coarse_ontology_term_id"].astype(object).fillna("").astype(str)
    sel = (coarse != cid) & (coarse != "")
    counts = obs.loc[sel.to_numpy(), f"{k}_coarse_label"].astype(str).value_counts().head(top)
    return pd.DataFrame({"cells": counts.to_numpy()}, index=pd.Index(counts.index, name="coarse label"))


@dataclass
class DotTable:
    """The dot plot's numbers: clusters x labels share of cells and mean probability, and how colour was got."""

    fraction: pd.DataFrame
    probability: pd.DataFrame
    sizes: pd.Series
    colour: str
    dropped: str = ""


def dot_table(clusters, labels, probability, *, matrix: np.ndarray | None = None, classes: list | None = None,
              max_rows: int = MAX_DOT_ROWS, max_columns: int = MAX_DOT_COLUMNS) -> DotTable:
    """CellTypist's dot plot numbers. Size: share of the cluster's cells predicted as the label. Colour: mean
    probability of the label over all the cluster's cells (CellTypist's; needs the probability matrix), else
    the mean probability of the cells predicted as it."""
    clusters = pd.Series(np.asarray(clusters, dtype=object).astype(str))
    labels = pd.Series(np.asarray(labels, dtype=object).astype(str))
    counts = pd.crosstab(clusters, labels)
    sizes = counts.sum(axis=1)
    cols = labels.value_counts().index[:max_columns]
    rows = sizes.sort_values(ascending=False).index[:max_rows]
    frac = counts.loc[rows, cols].div(sizes.loc[rows], axis=0)
    p = pd.Series(np.asarray(probability, dtype=float))
    own = p.groupby([clusters, labels]).mean().unstack().reindex(index=rows, columns=cols)
    colour = "mean probability of the cells predicted as the label"
    if matrix is not None and classes is not None:
        code = pd.Categorical(clusters, categories=list(rows)).codes
        keep = code >= 0
        sums = np.zeros((len(rows), matrix.shape[1]))
        for a in range(0, len(code), 65_536):  # in blocks: no float64 copy of the whole matrix
            sel = keep[a:a + 65_536]
            block = np.nan_to_num(np.asarray(matrix[a:a + 65_536], dtype=np.float64)[sel])
            np.add.at(sums, code[a:a + 65_536][sel], block)
        means = pd.DataFrame(sums / sizes.loc[rows].to_numpy()[:, None], index=rows, columns=list(classes))
        shared = [c for c in cols if c in means.columns]
        own.loc[:, shared] = means[shared].to_numpy()
        colour = "mean probability of the label over all the cluster's cells (from the probability matrix)"
    dropped = []
    if len(sizes) > len(rows):
        dropped.append(f"the {len(rows)} largest of {len(sizes)} clusters shown")
    if labels.nunique() > len(cols):
        dropped.append(f"the {len(cols)} most frequent of {labels.nunique()} labels shown")
    # rows in the order of their main label, as CellTypist's plot reads: a near diagonal
    main = frac.to_numpy().argmax(axis=1)
    order = np.lexsort((-frac.to_numpy().max(axis=1), main))
    rows = [rows[i] for i in order]
    return DotTable(fraction=frac.loc[rows], probability=own.loc[rows], sizes=sizes.loc[rows], colour=colour,
                    dropped="; ".join(dropped))
