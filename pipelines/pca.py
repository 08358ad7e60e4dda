"""Pipeline stage `pca`: exact PCA fitted on the train split, applied to every split (XGBoost's input)."""

from __future__ import annotations

import argparse

from rich.console import Console

from sctab.config import load_params
from sctab.data.pca import BLAS_THREADS, components_for, write_pca
from sctab.data.store import Store
from sctab.params_schema import section


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Fit an exact PCA (pca.n_components, with pca.shrink_to_train, at most train rows - 1) "
        "on the train split only: the gene-gene "
        "covariance is accumulated over the store in pca.batch_size-row chunks, then one symmetric "
        "eigendecomposition gives the top components. Then project the train, val and test splits. Writes "
        "pca.npz, <split>.npy (float32 embedding), <split>_cell_type.npy (int64 codes) and "
        "report.json into the output folder (atomically: complete or not at all). The BLAS runs on pca.blas_threads "
        "threads (default 1) so the output is the same bytes on any machine with the same CPU family; a larger "
        "count is faster on many cores and reproducible only with that count.")
    parser.add_argument("--params", default="params.yaml", help="YAML parameter file with a `pca` section "
                        "(default: %(default)s)")
    parser.add_argument("--store", default="data/store", help="store folder (default: %(default)s)")
    parser.add_argument("--out", default="data/pca", help="output folder (default: %(default)s)")
    args = parser.parse_args(argv)

    params = load_params(args.params)
    pca = section(params, "pca")
    n_components, batch_size = pca.n_components, pca.batch_size
    threads = pca.blas_threads or BLAS_THREADS
    store = Store(args.store)
    n_train = store.split("train").n_rows
    k = components_for(n_components, n_train, store.n_genes, pca.shrink_to_train)
    if k != n_components:
        Console().print(f"PCA: the train split has {n_train:,} rows: {k} components "
                        f"instead of pca.n_components={n_components} (pca.shrink_to_train)")
    r = write_pca(store, args.out, k, batch_size, blas_threads=threads)
    rows = ", ".join(f"{s} {n:,}" for s, n in r["rows"].items())
    Console().print(f"PCA: {r['n_components']} of {r['n_genes']:,} genes explain {r['explained_variance_ratio']:.1%} "
                    f"of the train variance; projected {rows} rows to {args.out} in {r['seconds']['total']:.1f} s")


if __name__ == "__main__":
    main()
