"""The report page's embedding: the input's own UMAP/t-SNE, else a UMAP of its obsm X_pca, else a UMAP of a PCA
of its normalised expression; above ``max_cells`` cells computed and drawn on a random sample.

Apart from the page because it is the one part that reads the input's expression and runs scanpy (the rest of
the page reads the annotated output's obs).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

MAX_EMBEDDING_CELLS = 50_000  # above it the embedding is computed and drawn on a random sample
EMBEDDINGS = ("X_umap", "X_tsne")


def _sample(n: int, cap: int, seed: int) -> np.ndarray:
    if n <= cap:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=cap, replace=False))


def _neighbours(a, seed: int) -> None:
    """scanpy's 15-neighbour graph on obsm X_pca; from 8,192 cells through voting's pynndescent wrapper (scanpy
    cannot read pynndescent 0.7's own output)."""
    import scanpy as sc

    from sctab.annotation.voting import PYNNDESCENT_FROM, _NNDescent

    n = a.n_obs
    k = min(15, n - 1)
    knn = _NNDescent(n, k, seed) if n >= PYNNDESCENT_FROM else None
    sc.pp.neighbors(a, n_neighbors=k, use_rep="X_pca", random_state=seed, transformer=knn)


def _umap(x, seed: int, *, from_pca: bool) -> np.ndarray:
    import anndata
    import scanpy as sc

    a = anndata.AnnData(np.asarray(x, dtype=np.float32))
    n = a.n_obs
    if n < 4:  # too few cells for a neighbour graph: the first two components
        return np.pad(np.asarray(x, dtype=float)[:, :2], ((0, 0), (0, max(0, 2 - x.shape[1]))))
    if from_pca:
        a.obsm["X_pca"] = a.X
    else:
        comps = max(2, min(50, n - 1, a.n_vars - 1))
        sc.pp.pca(a, n_comps=comps, random_state=seed)
    _neighbours(a, seed)
    sc.tl.umap(a, random_state=seed)
    return np.asarray(a.obsm["X_umap"])


def _expression(input: Path, rows: np.ndarray, *, layer, from_log1p, allow_non_integer):
    """log1p(size-factor normalised) values of the chosen counts matrix for ``rows``, streamed block by block."""
    import anndata
    import h5py
    import scipy.sparse as sp

    from sctab.census.counts import LegacyH5ad, adata_matrices, choose_matrix, h5ad_matrices

    with h5py.File(input, "r") as f:
        try:
            obs_names, matrices = h5ad_matrices(f, input)
            legacy = None
        except LegacyH5ad:
            legacy = anndata.read_h5ad(input)
            obs_names, matrices = adata_matrices(legacy)
        source = choose_matrix(obs_names, matrices, layer=layer, from_log1p=from_log1p,
                               allow_non_integer=allow_non_integer, source=str(input))
        wanted = np.zeros(source.n_obs, dtype=bool)
        wanted[rows] = True
        blocks = []
        step = 8192
        for a in range(0, source.n_obs, step):
            b = min(a + step, source.n_obs)
            if wanted[a:b].any():
                blocks.append(source.matrix.read(a, b)[np.flatnonzero(wanted[a:b])])
    x = sp.vstack(blocks).tocsr().astype(np.float64)
    if source.values == "log1p":
        np.expm1(x.data, out=x.data)
    sums = np.asarray(x.sum(axis=1)).ravel()
    scale = np.divide(1e4, sums, out=np.zeros_like(sums), where=sums > 0)
    x = sp.diags(scale) @ x
    x.data = np.log1p(x.data)
    return x, source.matrix.where


def _variable(x, n_top: int = 2000) -> np.ndarray:
    """The ``n_top`` genes of highest variance (of the log values) as a dense matrix."""
    mean = np.asarray(x.mean(axis=0)).ravel()
    var = np.asarray(x.multiply(x).mean(axis=0)).ravel() - mean ** 2
    keep = np.sort(np.argsort(-var)[:min(n_top, x.shape[1])])
    return np.asarray(x[:, keep].todense(), dtype=np.float32)


def embedding(input, *, max_cells: int = MAX_EMBEDDING_CELLS, seed: int = 0, layer=None, from_log1p=False,
              allow_non_integer=False) -> tuple[np.ndarray, np.ndarray, str]:
    """(row numbers drawn, their 2-D coordinates, what they are): the input's obsm UMAP/t-SNE as it is, else a
    UMAP of its obsm X_pca, else of a PCA of its normalised expression (2,000 most variable genes)."""
    import anndata

    input = Path(input)
    a = anndata.read_h5ad(input, backed="r")
    try:
        n = a.n_obs
        rows = _sample(n, max_cells, seed)
        sampled = f"{len(rows):,} of {n:,} cells, sampled at random (seed {seed})" if len(rows) < n \
            else f"all {n:,} cells"
        for k in EMBEDDINGS:
            if k in a.obsm and a.obsm[k].shape[1] >= 2:
                return rows, np.asarray(a.obsm[k])[rows, :2], f"{k[2:].upper()} from the input's obsm['{k}'] " \
                                                              f"({sampled})"
        pca = np.asarray(a.obsm["X_pca"])[rows] if "X_pca" in a.obsm and a.obsm["X_pca"].shape[1] >= 2 else None
    finally:
        a.file.close()
    if pca is not None:
        return rows, _umap(pca[:, :50], seed, from_pca=True), \
            f"UMAP computed here on the input's obsm['X_pca'] ({min(pca.shape[1], 50)} components; {sampled})"
    x, where = _expression(input, rows, layer=layer, from_log1p=from_log1p, allow_non_integer=allow_non_integer)
    dense = _variable(x)
    return rows, _umap(dense, seed, from_pca=False), \
        f"UMAP computed here on a PCA of the input's normalised expression ({where}, size factor 10,000 + log1p, " \
        f"{dense.shape[1]:,} most variable genes; {sampled})"
