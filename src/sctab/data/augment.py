"""Donor-difference augmentation vectors (paper, Methods "Data augmentation") and their online use.

The difference between the centroids of one cell type in two donors approximates how a cell would look
in another donor; adding +-such a vector during training simulates new donors. `compute_augmentations`
follows the paper's six steps; `Augmenter` applies the vectors to training batches.

Step 2 streams the train split one row group at a time (memory ~ groups x genes), and the difference
vectors are kept sparse after step 4 (most genes differ by less than the threshold), so their memory
follows the non-zero differences rather than pairs x genes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.sparse as sp
from tqdm.auto import tqdm

from sctab.data.store import Store
from sctab.io import atomic_dir, write_json
from sctab.params_schema import AugmentParams, build

# scikit-learn (k-means) and torch (the online Augmenter) are imported where used: the augment stage needs only
# the first, training only the second, and each costs seconds to import.

FILE_NAME = "augmentations.npy"  # the published artifact's name
REPORT_NAME = "augment_report.json"


class AugmentError(ValueError):
    """Augmentation vectors cannot be computed, loaded or applied as asked."""


# ------------------------------------------------------------------------------------------ computation
def compute_augmentations(store: Store, cfg: AugmentParams | dict) -> tuple[np.ndarray, dict]:
    """The paper's six steps on the train split; returns (n_vectors, n_genes) float32 and a report.

    cfg: the `augment` params section (sctab.params_schema.AugmentParams, or a mapping of its keys);
    `max_pairs_per_type` null: every pair; `minibatch_above`: MiniBatchKMeans beyond this many vectors (full
    KMeans is slow and memory hungry there). The report holds no timings so that re-runs write identical files.
    """
    if not isinstance(cfg, AugmentParams):
        cfg = build(AugmentParams, cfg, "augment")
    seed = int(cfg.seed)
    thr, clamp = float(cfg.zero_threshold), float(cfg.clamp)
    if not 0 <= thr < clamp:
        raise AugmentError(f"need 0 <= zero_threshold < clamp (got {thr} and {clamp})")
    n_vectors = int(cfg.n_vectors)
    if int(cfg.n_cells) <= 0 or n_vectors <= 0 or int(cfg.n_clusters) <= 0:
        raise AugmentError("n_cells, n_vectors and n_clusters must be positive")
    max_pairs = cfg.max_pairs_per_type

    try:
        obs = store.read_obs("train", ["cell_type", "tech_sample"])
    except Exception as e:  # an older store without tech_sample
        raise AugmentError(f"cannot read cell_type and tech_sample of the train split of {store.root}: {e}") from e
    if len(obs) == 0:
        raise AugmentError(f"the train split of {store.root} has no cells")
    report: dict = {"n_genes": store.n_genes, "train_cells": int(len(obs))}

    # 1. class-balanced subsample: every type gets the same budget, so common types do not dominate
    ct = obs["cell_type"].to_numpy()
    chosen, cap = balanced_subsample(ct, int(cfg.n_cells), seed)
    counts = np.unique(ct, return_counts=True)[1]
    report.update({"n_types": int(len(counts)), "cells_per_type_cap": cap, "cells_subsampled": int(len(chosen)),
                   "types_below_cap": int((counts < cap).sum())})

    # 2. centroids per (cell type, donor), streaming the row groups
    keys = obs.iloc[chosen][["cell_type", "tech_sample"]].to_numpy()
    groups, inverse = np.unique(keys, axis=0, return_inverse=True)  # sorted by type, then donor
    group_of = np.full(len(obs), -1, dtype=np.int64)
    group_of[chosen] = inverse.ravel()
    centroids = _centroids(store, group_of, len(groups))
    report["groups"] = int(len(groups))

    # 3-5. differences of every donor pair within a type, thresholded and clamped, kept sparse
    rng = np.random.default_rng([seed, 3])
    step = max(1, 2**24 // store.n_genes)  # pairs per chunk: ~64 MB of float32
    blocks, n_pairs, n_possible, n_zero, n_clamped, n_types_paired = [], 0, 0, 0, 0, 0
    for t in np.unique(groups[:, 0]):
        g = np.flatnonzero(groups[:, 0] == t)
        if len(g) < 2:
            continue
        n_types_paired += 1
        i, j = np.triu_indices(len(g), k=1)
        n_possible += len(i)
        if max_pairs is not None and len(i) > int(max_pairs):
            keep = np.sort(rng.choice(len(i), int(max_pairs), replace=False))
            i, j = i[keep], j[keep]
        n_pairs += len(i)
        for s in range(0, len(i), step):
            d = (centroids[g[j[s:s + step]]] - centroids[g[i[s:s + step]]]).astype(np.float32)
            d[np.abs(d) <= thr] = 0.0
            n_zero += int((d == 0).sum())
            n_clamped += int((np.abs(d) > clamp).sum())
            np.clip(d, -clamp, clamp, out=d)
            blocks.append(sp.csr_matrix(d))
    if n_pairs == 0:
        raise AugmentError(f"no cell type has two donors among the {len(chosen)} subsampled train cells: "
                           "there are no donor differences to compute (raise n_cells)")
    diffs = sp.vstack(blocks, format="csr")
    nonzero = np.flatnonzero(diffs.getnnz(axis=1) > 0)
    report.update({"types_with_pairs": n_types_paired, "pairs_possible": n_possible, "pairs": n_pairs,
                   "max_pairs_per_type": None if max_pairs is None else int(max_pairs),
                   "zero_fraction": round(n_zero / (n_pairs * store.n_genes), 6),
                   "clamped_fraction": round(n_clamped / (n_pairs * store.n_genes), 6),
                   "all_zero_dropped": int(n_pairs - len(nonzero))})
    if len(nonzero) == 0:
        raise AugmentError(f"all {n_pairs} difference vectors are zero after zeroing |v| <= {thr} "
                           "(lower zero_threshold)")
    diffs = diffs[nonzero]

    # 6. k-means; sample only from the big clusters (small ones hold outlier donors)
    minibatch_above = cfg.minibatch_above
    labels, k, algo = _kmeans(diffs, int(cfg.n_clusters), seed, minibatch_above)
    sizes = np.bincount(labels, minlength=k)
    big = np.flatnonzero(sizes > int(cfg.min_cluster_size))
    report.update({"vectors_clustered": int(diffs.shape[0]), "n_clusters": int(cfg.n_clusters),
                   "n_clusters_used": k, "kmeans": algo,
                   "cluster_sizes": sorted((int(s) for s in sizes), reverse=True),
                   "min_cluster_size": int(cfg.min_cluster_size), "clusters_kept": int(len(big))})
    if k < int(cfg.n_clusters):
        report["note"] = f"only {k} difference vectors, so k-means used {k} clusters instead of {cfg.n_clusters}"
    if len(big) == 0:
        raise AugmentError(f"no k-means cluster has more than min_cluster_size={cfg.min_cluster_size} vectors "
                           f"(largest: {int(sizes.max())} of {diffs.shape[0]}); use a smaller min_cluster_size")
    members = np.flatnonzero(np.isin(labels, big))
    replace = len(members) < n_vectors
    pick = np.random.default_rng([seed, 6]).choice(members, n_vectors, replace=replace)
    vectors = diffs[pick].toarray().astype(np.float32)
    report.update({"members_kept": int(len(members)), "sampled_with_replacement": bool(replace),
                   "vectors_out": int(len(vectors)), "seed": seed})
    return vectors, report


def balanced_subsample(labels: np.ndarray, n_cells: int, seed: int) -> tuple[np.ndarray, int]:
    """Sorted positions of at most n_cells // n_types cells per label (all of a smaller type), and that cap."""
    types = np.unique(labels)
    cap = n_cells // max(len(types), 1)
    if cap == 0:
        raise AugmentError(f"n_cells {n_cells} is smaller than the number of cell types ({len(types)})")
    rng = np.random.default_rng([seed, 1])
    chosen = []
    for t in types:
        rows = np.flatnonzero(labels == t)
        chosen.append(rows if len(rows) <= cap else rng.choice(rows, cap, replace=False))
    return np.sort(np.concatenate(chosen)), cap


def _centroids(store: Store, group_of: np.ndarray, n_groups: int) -> np.ndarray:
    """Mean X per group; `group_of` maps train row positions to groups (-1: not subsampled)."""
    sums = np.zeros((n_groups, store.n_genes), dtype=np.float64)
    counts = np.bincount(group_of[group_of >= 0], minlength=n_groups)
    start = 0
    for path, index, n_rows in tqdm(store.split("train").row_groups, desc="augment: read train", unit="row group",
                                    disable=None):
        g = group_of[start:start + n_rows]
        start += n_rows
        sel = np.flatnonzero(g >= 0)
        if not len(sel):
            continue  # skip reading X of row groups without subsampled cells
        x = store.read_row_group(path, index, ("X",))["X"]
        if len(x) != n_rows:
            raise AugmentError(f"row group {index} of {path} has {len(x)} rows, its metadata says {n_rows}")
        order = sel[np.argsort(g[sel], kind="stable")]
        ug, first = np.unique(g[order], return_index=True)
        sums[ug] += np.add.reduceat(x[order].astype(np.float64), first, axis=0)
    if start != len(group_of):
        raise AugmentError(f"train split has {start} rows in its row groups but {len(group_of)} in its obs columns")
    return sums / counts[:, None]


def _kmeans(x: sp.csr_matrix, n_clusters: int, seed: int, minibatch_above: int) -> tuple[np.ndarray, int, str]:
    from sklearn.cluster import KMeans, MiniBatchKMeans

    k = min(n_clusters, x.shape[0])
    if x.shape[0] > minibatch_above:
        km = MiniBatchKMeans(n_clusters=k, random_state=seed, n_init=3, batch_size=4096)
    else:
        km = KMeans(n_clusters=k, random_state=seed, n_init=3)
    return km.fit_predict(x).astype(np.int64), k, type(km).__name__


# ------------------------------------------------------------------------------------------------ files
def write_augmentations(vectors: np.ndarray, report: dict, out_dir: str | Path) -> Path:
    """`augmentations.npy` and `augment_report.json`, both or neither."""
    with atomic_dir(out_dir) as tmp:
        np.save(tmp / FILE_NAME, np.ascontiguousarray(vectors, dtype=np.float32))
        write_json(tmp / REPORT_NAME, report)
    return Path(out_dir)


def load_augmentations(path: str | Path, n_genes: int) -> np.ndarray:
    """Read and check augmentation vectors (the .npy file or its folder) for a store of `n_genes` genes."""
    path = Path(path)
    if path.is_dir():
        path = path / FILE_NAME
    if not path.exists():
        raise AugmentError(f"augmentation file {path} does not exist (run the augment stage: pipelines/augment.py)")
    try:
        v = np.load(path, allow_pickle=False)
    except Exception as e:
        raise AugmentError(f"cannot read augmentation file {path}: {e}") from e
    if v.ndim != 2:
        raise AugmentError(f"augmentation file {path} has shape {v.shape}, expected (vectors, genes)")
    if v.shape[0] == 0:
        raise AugmentError(f"augmentation file {path} holds no vectors")
    if v.shape[1] != n_genes:
        raise AugmentError(f"augmentation file {path} has {v.shape[1]} columns, the store has {n_genes} genes")
    if not np.issubdtype(v.dtype, np.number) or not np.isfinite(v).all():
        raise AugmentError(f"augmentation file {path} has non-finite or non-numeric values")
    return v.astype(np.float32, copy=False)


# ------------------------------------------------------------------------------------------ online use
class Augmenter:
    """x +- one random vector per row, clamped to `clip` (training batches only)."""

    def __init__(self, vectors, clip: tuple[float, float] = (0.0, 9.0)):
        import torch

        v = torch.as_tensor(vectors, dtype=torch.float32)
        if v.ndim != 2 or v.shape[0] == 0:
            raise AugmentError(f"augmentation vectors must be a non-empty 2-D array, got shape {tuple(v.shape)}")
        self.vectors = v
        self.clip = (float(clip[0]), float(clip[1]))

    def to(self, device) -> "Augmenter":
        self.vectors = self.vectors.to(device)
        return self

    def __call__(self, x, generator=None):
        import torch

        if x.ndim != 2 or x.shape[1] != self.vectors.shape[1]:
            raise AugmentError(f"batch has shape {tuple(x.shape)}, but the augmentation vectors have "
                               f"{self.vectors.shape[1]} genes")
        if self.vectors.device != x.device:
            self.vectors = self.vectors.to(x.device)  # once; later calls find it there
        n, k = x.shape[0], self.vectors.shape[0]
        # one draw gives both choices: r // 2 is the vector, r % 2 the sign
        dev = generator.device if generator is not None else x.device
        r = torch.randint(0, 2 * k, (n,), generator=generator, device=dev).to(x.device)
        sign = ((r % 2) * 2 - 1).to(x.dtype).unsqueeze(1)
        v = self.vectors.index_select(0, r // 2)
        return torch.addcmul(x, sign, v.to(x.dtype)).clamp_(*self.clip)
