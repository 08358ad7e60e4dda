"""Synthetic stores of the paper's shape for benchmarks: written directly, not through the DVC stages.

Why not the `bench` profile's pipeline: building its census, extraction and split takes far longer than the
benchmarks and tells nothing about throughput; the loader and the model only see the store. The counts here
are 10x-like: Poisson draws around a heavy-tailed (log-normal) gene profile plus a per-class module of
up-regulated genes, library sizes around 3,000 UMIs, giving ~1,500 detected genes of 19,331 per cell
(~8% non-zero), then the store's own normalisation (10,000 + log1p). Same layout as `write_store`
(dense parts, `sparse/` beside them, var.parquet, cell_type lookup).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from sctab.data.normalize import normalize_log1p
from sctab.data.store_writer import PartWriter, write_frame, write_sparse_layout, x_list_array
from sctab.io import atomic_dir

VERSION = 1  # bump when the generator changes: cached stores are keyed by it


def gene_profile(rng: np.random.Generator, n_genes: int, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(base expression per gene, 40 up-regulated genes per class): shared by every chunk of cells."""
    return rng.lognormal(0.0, 1.6, n_genes), rng.integers(0, n_genes, (n_classes, 40))


def synthetic_counts(rng: np.random.Generator, n_cells: int, profile: tuple[np.ndarray, np.ndarray],
                     library_size: float = 3000.0) -> tuple[np.ndarray, np.ndarray]:
    """(counts (n_cells, n_genes) float32, labels)."""
    base, modules = profile
    n_genes, n_classes = len(base), len(modules)
    labels = rng.integers(0, n_classes, n_cells)
    rate = np.broadcast_to(base, (n_cells, n_genes)).copy()
    rate[np.arange(n_cells)[:, None], modules[labels]] *= 12.0
    lib = rng.lognormal(np.log(library_size), 0.4, n_cells)
    rate *= (lib / rate.sum(1))[:, None]
    counts = rng.poisson(rate).astype(np.float32)
    counts[counts.sum(1) == 0, 0] = 1.0  # every cell needs counts to be normalised
    return counts, labels


def make_store(root: str | Path, n_cells: int, n_genes: int = 19_331, n_classes: int = 164, seed: int = 0,
               row_group_size: int = 1024, rows_per_part: int = 8192) -> Path:
    """Write a train-only store (dense + sparse layout) at `root` unless it is already there; return it."""
    root = Path(root)
    if (root / "bench_store.json").exists():
        if not any((root / "sparse" / "train").glob("*.arrow")):  # written by an older sparse layout
            write_sparse_layout(root)
        return root
    rng = np.random.default_rng([seed, VERSION])
    profile = gene_profile(np.random.default_rng([seed, VERSION, 1]), n_genes, n_classes)
    with atomic_dir(root) as tmp:
        (tmp / "train").mkdir()
        parts = PartWriter(tmp / "train", rows_per_part=rows_per_part, row_group_size=row_group_size)
        chunk = 2048
        for start in range(0, n_cells, chunk):
            n = min(chunk, n_cells - start)
            counts, labels = synthetic_counts(rng, n, profile)
            x = normalize_log1p(counts)
            parts.add(pa.table({"X": x_list_array(x), "cell_type": pa.array(labels, pa.int64()),
                                "soma_joinid": pa.array(np.arange(start, start + n), pa.int64())}))
        parts.close(truncate=False)
        (tmp / "categorical_lookup").mkdir()
        write_frame(pd.DataFrame({"label": [f"type_{i:03d}" for i in range(n_classes)]}),
                    tmp / "categorical_lookup" / "cell_type.parquet")
        write_frame(pd.DataFrame({"feature_id": [f"ENSG{i:011d}" for i in range(n_genes)],
                                  "feature_name": [f"G{i}" for i in range(n_genes)]}), tmp / "var.parquet")
    stats = write_sparse_layout(root)
    (root / "bench_store.json").write_text(json.dumps({"n_cells": n_cells, "n_genes": n_genes,
                                                       "n_classes": n_classes, "seed": seed, **stats}))
    return root


def store_stats(root: str | Path) -> dict:
    return json.loads((Path(root) / "bench_store.json").read_text())
