"""Which training rows a run uses: a nested subset stored with the data, or the cells of one obs label.

``donors_30`` / ``cells_50`` name the store's nested subsets (paper, Methods "Subsampled datasets");
``tissue_general=lung`` selects the train cells whose obs column has that label (the lung-only models of the
paper's Supp. Table 2). Both give sorted row positions inside the train split.
"""

from __future__ import annotations

import numpy as np

from sctab.data.store import Store, StoreError


def label_rows(store: Store, split: str, column: str, label: str) -> np.ndarray:
    """Sorted positions (file order) of the rows of ``split`` whose ``column`` has ``label``."""
    lookup = store.lookup(column)["label"].astype(str).tolist()
    if label not in lookup:
        raise StoreError(f"{column} has no label {label!r} in store {store.root}; labels: {lookup}")
    codes = store.read_obs(split, columns=(column,))[column].to_numpy()
    rows = np.flatnonzero(codes == lookup.index(label)).astype(np.int64)
    if rows.size == 0:
        raise StoreError(f"no {split} cell of store {store.root} has {column} = {label!r}")
    return rows


def train_rows(store: Store, subset: str | None) -> np.ndarray | None:
    """Row positions in train for ``subset`` (None: every row)."""
    if not subset:
        return None
    if "=" in subset:
        column, label = subset.split("=", 1)
        return label_rows(store, "train", column.strip(), label.strip())
    return store.train_subset(subset)
