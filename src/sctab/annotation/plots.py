"""Where people would rather look than read: an embedding coloured by predicted label and by uncertainty."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sctab.annotation.errors import AnnotateError


def _embedding(adata, basis: str | None, seed: int):
    """An existing obsm embedding, or a UMAP computed with scanpy on a normalised copy."""
    keys = [basis] if basis else ["X_umap", "X_tsne", "X_pca"]
    for k in keys:
        k = k if k.startswith("X_") else f"X_{k}"
        if k in adata.obsm and adata.obsm[k].shape[1] >= 2:
            return np.asarray(adata.obsm[k])[:, :2], k[2:].upper()
    if basis:
        raise AnnotateError(f"no embedding {basis!r} in obsm (has: {list(adata.obsm.keys())})")
    import scanpy as sc

    work = adata.copy()
    if "counts" in work.layers:
        work.X = work.layers["counts"].copy()
    sc.pp.normalize_total(work, target_sum=1e4)
    sc.pp.log1p(work)
    n_comps = max(2, min(30, work.n_obs - 1, work.n_vars - 1))
    sc.pp.pca(work, n_comps=n_comps, random_state=seed)
    sc.pp.neighbors(work, n_neighbors=min(15, max(2, work.n_obs - 1)), random_state=seed)
    sc.tl.umap(work, random_state=seed)
    adata.obsm["X_umap"] = work.obsm["X_umap"]
    return adata.obsm["X_umap"][:, :2], "UMAP"


def draw_embedding(xy: np.ndarray, labels: np.ndarray, uncertainty: np.ndarray, name: str, *,
                   max_labels: int = 20, point_size: float = 4.0):
    """The two panels of :func:`plot_annotation` from coordinates (also the annotation report's figure)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    counts = {lab: int((labels == lab).sum()) for lab in np.unique(labels)}
    top = sorted(counts, key=lambda k: -counts[k])[:max_labels]
    fig, axes = plt.subplots(1, 2, figsize=(14, 6), constrained_layout=True)
    cmap = plt.get_cmap("tab20")
    for i, lab in enumerate(top):
        sel = labels == lab
        axes[0].scatter(xy[sel, 0], xy[sel, 1], s=point_size, color=cmap(i % 20), label=f"{lab} ({counts[lab]})",
                        rasterized=True)
    rest = ~np.isin(labels, top)
    if rest.any():
        axes[0].scatter(xy[rest, 0], xy[rest, 1], s=point_size, color="lightgrey", label=f"other ({int(rest.sum())})",
                        rasterized=True)
    axes[0].legend(fontsize=7, markerscale=3, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    axes[0].set_title("predicted cell type")
    sc_ = axes[1].scatter(xy[:, 0], xy[:, 1], s=point_size, c=uncertainty, cmap="viridis", vmin=0, vmax=1,
                          rasterized=True)
    fig.colorbar(sc_, ax=axes[1], label="uncertainty (1 - max probability)")
    axes[1].set_title("ensemble uncertainty")
    for ax in axes:
        ax.set_xlabel(f"{name} 1")
        ax.set_ylabel(f"{name} 2")
        ax.set_xticks([])
        ax.set_yticks([])
    return fig


def plot_annotation(adata, *, key_added: str = "sctab", basis: str | None = None, path: str | Path | None = None,
                    max_labels: int = 20, seed: int = 0):
    """Two panels: the embedding coloured by ``{key_added}_label`` and by ``{key_added}_uncertainty``.

    Uses ``obsm['X_umap']`` (or tSNE/PCA) when present, else computes a UMAP with scanpy and stores it in
    ``adata.obsm['X_umap']``. Saves to ``path`` when given; returns the matplotlib figure.
    """
    label_col, unc_col = f"{key_added}_label", f"{key_added}_uncertainty"
    missing = [c for c in (label_col, unc_col) if c not in adata.obs]
    if missing:
        raise AnnotateError(f"obs lacks {missing}: run sctab.annotate(adata) first")
    xy, name = _embedding(adata, basis, seed)
    fig = draw_embedding(xy, adata.obs[label_col].astype(str).to_numpy(), adata.obs[unc_col].to_numpy(dtype=float),
                         name, max_labels=max_labels)
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120)
    return fig
