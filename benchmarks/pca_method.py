#!/usr/bin/env python
"""The pca stage's fit at the paper's dimension: streamed covariance + eigh against the IncrementalPCA it replaced.

Times, on one synthetic (rows x genes) chunk of log1p-normalised expression: one covariance chunk
(sctab.data.pca.GramAccumulator.add, float32 SYRK into a float64 sum) with 1 and 2 BLAS threads, optionally the
same product in float64, one IncrementalPCA.partial_fit of the same rows after a first k-row batch (its steady
state: an SVD of (k + rows) x genes), and the top-k symmetric eigendecomposition at --eigh-genes genes,
extrapolated as n^3 to --genes (pass --eigh-genes 19331 to measure it instead: ~15 min on one core).
Projections to --train-cells on a --node-cores node assume the BLAS scales linearly with cores (an
assumption, not measured). About 3 minutes on 2 idle cores with the defaults. Prints a table; writes nothing.
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np
from threadpoolctl import threadpool_limits


def _chunk(rows: int, genes: int, seed: int = 0) -> np.ndarray:
    """scRNA-like rows: Poisson counts of a few mixed programmes, normalised to 1e4 per cell, log1p."""
    rng = np.random.default_rng(seed)
    prog = rng.gamma(0.3, 1.0, size=(20, genes)).astype(np.float32)
    rate = rng.dirichlet(np.full(20, 0.2), size=rows).astype(np.float32) @ prog
    counts = rng.poisson(rate * 0.4).astype(np.float32)
    return np.log1p(counts / np.maximum(counts.sum(axis=1, keepdims=True), 1) * 1e4)


def _rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--genes", type=int, default=19331)
    ap.add_argument("--rows", type=int, default=4096, help="rows per chunk (pca.batch_size)")
    ap.add_argument("--k", type=int, default=256, help="components (pca.n_components)")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--eigh-genes", type=int, default=5000)
    ap.add_argument("--float64", action="store_true", help="also time the chunk product in float64 (1 thread)")
    ap.add_argument("--skip-ipca", action="store_true")
    ap.add_argument("--train-cells", type=float, default=15.2e6)
    ap.add_argument("--node-cores", type=int, default=16)
    args = ap.parse_args(argv)

    from scipy.linalg import blas, eigh
    from sklearn.decomposition import IncrementalPCA

    from sctab.data.pca import GramAccumulator

    x = _chunk(args.rows, args.genes)
    print(f"chunk {args.rows} x {args.genes} float32, {(x == 0).mean():.0%} zeros; k={args.k}", flush=True)
    rows = []  # (step, threads, seconds, cells/s or None)

    for t in args.threads:
        with threadpool_limits(t, "blas"):
            acc = GramAccumulator(args.genes)
            acc.add(x[:2].copy())  # allocates the float64 sum and the float32 product (page faults)
            c = x.copy()
            t0 = time.perf_counter()
            acc.add(c)
            dt = time.perf_counter() - t0
            del acc, c
        rows.append(("covariance chunk (float32 SYRK, float64 sum)", t, dt, args.rows / dt))
        print(rows[-1], flush=True)
    rss_cov = _rss_gib()

    if args.float64:
        with threadpool_limits(1, "blas"):
            c = x.astype(np.float64)
            blas.dsyrk(1.0, c[:2].T, lower=1)
            t0 = time.perf_counter()
            blas.dsyrk(1.0, c.T, lower=1)
            dt = time.perf_counter() - t0
            del c
        rows.append(("covariance chunk product in float64 (DSYRK)", 1, dt, args.rows / dt))
        print(rows[-1], flush=True)

    if not args.skip_ipca:
        with threadpool_limits(1, "blas"):
            ipca = IncrementalPCA(n_components=args.k, copy=True)
            ipca.partial_fit(_chunk(args.k, args.genes, seed=1))  # the steady state has k previous components
            t0 = time.perf_counter()
            ipca.partial_fit(x)
            dt = time.perf_counter() - t0
            del ipca
        rows.append(("old: IncrementalPCA.partial_fit", 1, dt, args.rows / dt))
        print(rows[-1], flush=True)

    n, k = args.eigh_genes, args.k
    rng = np.random.default_rng(2)
    a = rng.random((2 * k, n))
    eig = []
    with threadpool_limits(1, "blas"):
        for driver in ("evr", "evx"):
            cov = blas.dsyrk(1.0 / n, a.T, lower=1)
            cov.flat[:: n + 1] += rng.random(n) * 0.01
            t0 = time.perf_counter()
            eigh(cov, lower=True, subset_by_index=[n - k, n - 1], driver=driver, overwrite_a=True, check_finite=False)
            eig.append((driver, time.perf_counter() - t0))
            print(eig[-1], flush=True)

    print(f"\n| step | BLAS threads | seconds | cells/s | cells/s per core | {args.train_cells / 1e6:.1f} M cells, "
          f"{args.node_cores} cores (linear scaling assumed) |")
    print("|---|---:|---:|---:|---:|---:|")
    for step, t, dt, cps in rows:
        per_core = cps / t
        hours = args.train_cells / (per_core * args.node_cores) / 3600
        print(f"| {step} | {t} | {dt:.2f} | {cps:,.0f} | {per_core:,.0f} | {hours:.2f} h |")
    scale = (args.genes / n) ** 3
    for driver, dt in eig:
        label = "measured" if n == args.genes else f"measured at {n:,} genes, x{scale:.1f} (n^3)"
        print(f"| eigh top {k}, driver={driver}, {args.genes:,} genes ({label}) | 1 | {dt * scale:.1f} | | | "
              "once, not scaled |")
    print(f"\npeak RSS after the covariance chunks: {rss_cov:.2f} GiB; at the end: {_rss_gib():.2f} GiB")


if __name__ == "__main__":
    main()
