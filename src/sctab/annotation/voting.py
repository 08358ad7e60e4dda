"""Majority voting over clusters, as CellTypist users know it (``--majority-voting``).

Per-cell labels are noisy where types are close; cells of one small, tight cluster are almost surely one
type. So the cells are over-clustered (more, smaller clusters than there are types, so that a cluster rarely
straddles two types) and each cluster takes the label most of its cells got. CellTypist's recipe, which we
follow in our own code so that results are comparable:

- the graph: an existing ``obsp['connectivities']`` if the input has one; otherwise the log1p-normalised
  expression (here: of the model's genes), the 2,500 most variable genes (genes seen in fewer than 5 cells
  dropped first), scaled (clipped at 10), 50 principal components, 10 nearest neighbours;
- Leiden at a resolution that grows with the number of cells: 5 below 5,000 cells, then 10, 15, 20, 25 and
  30 from 20,000, 40,000, 100,000 and 200,000 cells;
- each cluster's label is its most frequent per-cell label (ties: the alphabetically first); with
  ``min_prop`` > 0 a cluster whose winner holds a smaller share is "Heterogeneous".

Cells labelled "Unassigned" vote like any other label, as in CellTypist.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp

from sctab.annotation.errors import AnnotateError

HETEROGENEOUS = "Heterogeneous"
RESOLUTION_STEPS = ((5_000, 5.0), (20_000, 10.0), (40_000, 15.0), (100_000, 20.0), (200_000, 25.0))


def default_resolution(n_cells: int) -> float:
    """CellTypist's over-clustering resolution for ``n_cells`` cells."""
    for below, resolution in RESOLUTION_STEPS:
        if n_cells < below:
            return resolution
    return 30.0


PYNNDESCENT_FROM = 8192  # scanpy's exact (brute force) kNN below this many cells, pynndescent from here on


class _NNDescent:
    """pynndescent's approximate kNN with the settings scanpy takes from UMAP, returning the ``csr_matrix``
    scanpy expects: pynndescent 0.7 returns a ``csr_array``, which scanpy 1.11's neighbour code cannot read
    (``getnnz``), so without this wrapper every input of 8,192 cells or more would fail."""

    def __init__(self, n_obs: int, n_neighbors: int, seed: int):
        from pynndescent import PyNNDescentTransformer

        self._knn = PyNNDescentTransformer(n_neighbors=n_neighbors, metric="euclidean", random_state=seed,
                                           n_trees=min(64, 5 + round(n_obs ** 0.5 / 20.0)),
                                           n_iters=max(5, round(np.log2(n_obs))))

    def get_params(self, deep: bool = True) -> dict:
        return self._knn.get_params(deep)

    def fit(self, x, y=None):
        self._knn.fit(x)
        return self

    def transform(self, x):
        return sp.csr_matrix(self._knn.transform(x))

    def fit_transform(self, x, y=None):
        return sp.csr_matrix(self._knn.fit_transform(x))


def neighbour_graph(x_log1p, *, seed: int = 0) -> sp.csr_matrix:
    """kNN connectivities of log1p-normalised cells (CellTypist's recipe, see the module docstring)."""
    import anndata
    import scanpy as sc

    n = x_log1p.shape[0]
    adata = anndata.AnnData(sp.csr_matrix(x_log1p, dtype=np.float32))
    sc.pp.filter_genes(adata, min_cells=min(5, n))
    if adata.n_vars < 2:
        raise AnnotateError(f"majority voting: only {adata.n_vars} gene(s) are expressed in enough cells to build "
                            f"a neighbour graph; give clusters with --over-clustering COLUMN instead")
    adata.uns["log1p"] = {"base": None}  # the values are log1p already
    sc.pp.highly_variable_genes(adata, n_top_genes=min(2500, adata.n_vars), subset=True)
    adata.X = adata.X.toarray()  # scaling centres the genes: dense (cells x at most 2,500), as in CellTypist
    sc.pp.scale(adata, max_value=10)
    n_comps = max(1, min(50, n - 1, adata.n_vars - 1))
    sc.pp.pca(adata, n_comps=n_comps, random_state=seed)
    k = min(10, n)
    knn = _NNDescent(n, k, seed) if n >= PYNNDESCENT_FROM else None
    sc.pp.neighbors(adata, n_neighbors=k, n_pcs=n_comps, random_state=seed, transformer=knn)
    return sp.csr_matrix(adata.obsp["connectivities"])


def leiden(connectivities, *, resolution: float, seed: int = 0) -> np.ndarray:
    """Leiden clusters (as strings '0', '1', ...) of a connectivity graph (igraph flavour, 2 iterations)."""
    import anndata
    import scanpy as sc

    n = connectivities.shape[0]
    adata = anndata.AnnData(sp.csr_matrix((n, 0), dtype=np.float32))
    adata.obsp["connectivities"] = sp.csr_matrix(connectivities)
    adata.uns["neighbors"] = {"connectivities_key": "connectivities", "params": {"method": "umap"}}
    sc.tl.leiden(adata, resolution=resolution, flavor="igraph", n_iterations=2, directed=False,
                 random_state=seed, key_added="over_clustering")
    return adata.obs["over_clustering"].astype(str).to_numpy()


def over_cluster(x_log1p=None, *, connectivities=None, resolution: float | None = None,
                 seed: int = 0) -> tuple[np.ndarray, dict]:
    """Cluster ids per cell and what was done, from a given graph or one built from ``x_log1p``."""
    n = (connectivities if connectivities is not None else x_log1p).shape[0]
    res = float(resolution) if resolution is not None else default_resolution(n)
    if res <= 0:
        raise AnnotateError(f"the over-clustering resolution must be > 0, got {res}")
    if n < 3:  # too few cells for a graph: one cluster
        return np.zeros(n, dtype=object).astype(str), {"over_clustering": "one cluster (fewer than 3 cells)"}
    graph = "obsp['connectivities'] of the input"
    if connectivities is None:
        connectivities = neighbour_graph(x_log1p, seed=seed)
        graph = "kNN graph (10 neighbours) on PCA of the model's genes"
    clusters = leiden(connectivities, resolution=res, seed=seed)
    return clusters, {"over_clustering": f"Leiden at resolution {res:g} on the {graph}"}


def majority_vote(labels, clusters, *, min_prop: float = 0.0) -> np.ndarray:
    """Each cell's cluster's most frequent label (``HETEROGENEOUS`` where its share is below ``min_prop``)."""
    if not 0.0 <= min_prop <= 1.0:
        raise AnnotateError(f"min_prop must be between 0 and 1, got {min_prop}")
    labels = pd.Series(np.asarray(labels, dtype=object).astype(str))
    clusters = pd.Series(np.asarray(clusters, dtype=object).astype(str))
    if len(labels) != len(clusters):
        raise AnnotateError(f"{len(clusters)} cluster ids for {len(labels)} cells")
    if not len(labels):
        return np.zeros(0, dtype=object)
    counts = pd.crosstab(clusters, labels)  # clusters x labels, columns sorted: ties go to the first label
    winner = counts.idxmax(axis=1)
    share = counts.max(axis=1) / counts.sum(axis=1)
    winner[share < min_prop] = HETEROGENEOUS
    return winner.loc[clusters].to_numpy(dtype=object)
