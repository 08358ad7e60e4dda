"""Real cells shipped in a package: scanpy's bundled ``pbmc68k_reduced`` (700 PBMCs of the 10x 68k set), as counts.

The file keeps no counts in ``X`` (scaled values) but keeps, in ``.raw``, the log-normalised values of 765 genes
(``log1p(counts / total x 10,000)``) and, in ``obs.n_counts``, each cell's whole-transcriptome total. The counts
of those genes are therefore ``expm1(raw) x n_counts / 10,000``. Measured on scanpy 1.11's file: 99.5% of the
non-zero values come back within 0.01 of an integer, the rest are larger counts off by at most 0.08 (under 0.08%
of the count: the file's values were rounded in single precision), so they are rounded; the largest distances,
absolute and relative to the count, are reported, and a relative distance over 0.2% is refused as another file.
Labels: ``bulk_labels``, ten sorted-population names (Zheng et al. 2017), mapped to Cell Ontology ids by
``conf/label_maps/pbmc68k.yaml``. There is no donor, lane or batch column: a reference built on it splits cells.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp

#: the total each cell was scaled to before log1p (scanpy's normalisation of this file)
TARGET_SUM = 10_000.0
#: a reconstructed count further than this from an integer, relative to the count (at least 1), means the file
#: is not what this module expects
MAX_RELATIVE_DISTANCE = 0.002


class Pbmc68kError(RuntimeError):
    """The bundled file is missing or its values do not give back integer counts."""


@dataclass
class ReconstructedCounts:
    counts: sp.csr_matrix          # cells x genes, float32 holding integers
    genes: list[str]               # symbols
    obs: pd.DataFrame              # bulk_labels as cell_type, plus the file's QC columns
    max_integer_distance: float    # largest |x - round(x)| over the non-zero reconstructed values
    max_relative_distance: float   # ... divided by max(1, round(x))
    fraction_within_0_01: float    # share of non-zero values within 0.01 of an integer


def reconstruct_counts(log_norm: np.ndarray, totals: np.ndarray, target_sum: float = TARGET_SUM
                       ) -> tuple[np.ndarray, float, float, float]:
    """Counts from log1p(counts / total x target_sum) and each cell's total; (rounded counts, max distance to an
    integer before rounding, the same relative to the count, share within 0.01)."""
    log_norm = np.asarray(log_norm, dtype=np.float64)
    totals = np.asarray(totals, dtype=np.float64).reshape(-1, 1)
    if log_norm.shape[0] != totals.shape[0]:
        raise Pbmc68kError(f"{log_norm.shape[0]} cells of values but {totals.shape[0]} totals")
    if (totals <= 0).any():
        raise Pbmc68kError("a cell has a total count <= 0: the counts cannot be reconstructed")
    raw = np.expm1(log_norm) * totals / target_sum
    nz = raw[raw > 0]
    dist = np.abs(nz - np.round(nz))
    max_dist = float(dist.max()) if dist.size else 0.0
    max_rel = float((dist / np.maximum(1.0, np.round(nz))).max()) if dist.size else 0.0
    within = float(np.mean(dist < 0.01)) if dist.size else 1.0
    return np.round(raw), max_dist, max_rel, within


def read_pbmc68k() -> ReconstructedCounts:
    """The 700 cells with reconstructed counts of the 765 genes of ``.raw`` and their bulk labels."""
    try:
        import scanpy as sc

        adata = sc.datasets.pbmc68k_reduced()
    except Exception as e:  # noqa: BLE001 - scanpy missing or its bundled file unreadable: say which
        raise Pbmc68kError(f"scanpy's bundled pbmc68k_reduced could not be read: {e}") from e
    if adata.raw is None or "n_counts" not in adata.obs or "bulk_labels" not in adata.obs:
        raise Pbmc68kError("pbmc68k_reduced lacks .raw, obs.n_counts or obs.bulk_labels: another scanpy layout")
    x = adata.raw.X
    x = x.toarray() if sp.issparse(x) else np.asarray(x)
    counts, max_dist, max_rel, within = reconstruct_counts(x, adata.obs["n_counts"].to_numpy())
    if max_rel > MAX_RELATIVE_DISTANCE:
        raise Pbmc68kError(f"reconstructed counts are up to {max_rel:.2%} of the count from an integer (limit "
                           f"{MAX_RELATIVE_DISTANCE:.1%}): .raw is not log1p(counts / n_counts x {TARGET_SUM:,.0f})")
    obs = pd.DataFrame({
        "cell_type": adata.obs["bulk_labels"].astype(str).to_numpy(),
        "n_counts_whole_transcriptome": adata.obs["n_counts"].to_numpy(),
        "louvain": adata.obs["louvain"].astype(str).to_numpy(),
    }, index=[f"pbmc68k-{b}" for b in adata.obs_names])
    return ReconstructedCounts(counts=sp.csr_matrix(counts.astype(np.float32)),
                               genes=list(map(str, adata.raw.var_names)), obs=obs, max_integer_distance=max_dist,
                               max_relative_distance=max_rel, fraction_within_0_01=within)
