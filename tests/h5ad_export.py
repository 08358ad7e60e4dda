"""The embedded census as CELLxGENE-schema .h5ad files, one per dataset: the h5ad source's exact oracle.

The files vary the way downloads do: most carry Ensembl ids and counts in X; one has gene symbols as
var_names, normalised values in X and the counts in layers['counts']; one keeps its counts in .raw.X and
only a free-text ``cell_type`` column (no ontology ids). The census's ``tissue_general`` is kept (portal files
lack it; the source then reads ``tissue``), so that the stores can match code for code.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from sctab.census.genes import protein_coding_ids
from sctab.census.synthetic import SyntheticCensusConfig, generate_census_anndata

SYMBOLS, RAW_FREE_TEXT = 1, 2  # which datasets (in dataset_id order) get the two odd layouts


def _log1p_normalised(x: sp.csr_matrix) -> sp.csr_matrix:
    sums = np.asarray(x.sum(axis=1)).ravel()
    y = sp.diags(1e4 / np.maximum(sums, 1)) @ x
    y = sp.csr_matrix(y, dtype=np.float32)
    y.data = np.log1p(y.data)
    return y


def export_datasets(params: dict, out: Path) -> list[Path]:
    """Write one .h5ad per dataset of the census that ``params`` generates; paths in census (dataset_id) order."""
    adata, _ = generate_census_anndata(SyntheticCensusConfig.from_params(params))
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    coding = adata.var["feature_id"].isin(protein_coding_ids()).to_numpy()
    for k, ds in enumerate(pd.unique(adata.obs["dataset_id"])):
        part = adata[adata.obs["dataset_id"] == ds].copy()
        part.obs_names = [f"{ds}-{i}" for i in range(part.n_obs)]
        x = sp.csr_matrix(part.X, dtype=np.float32)
        if k == SYMBOLS:  # symbols as var_names (protein-coding genes: unique symbols), counts in a layer
            part = part[:, coding].copy()
            x = sp.csr_matrix(part.X, dtype=np.float32)
            part.var_names = part.var["feature_name"].astype(str).to_numpy()
            part.var = part.var.drop(columns=["feature_id"])
            part.layers["counts"] = x
            part.X = _log1p_normalised(x)
        elif k == RAW_FREE_TEXT:  # counts in .raw, labels as free text only
            part.raw = part.copy()
            part.X = _log1p_normalised(x)
            part.obs = part.obs.drop(columns=["cell_type_ontology_term_id"])
        path = out / f"dataset_{k:02d}.h5ad"
        part.write_h5ad(path)
        paths.append(path)
    return paths
