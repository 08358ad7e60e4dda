"""Open a census — the embedded synthetic one or the hosted CELLxGENE census — through one API.

Both go through `cellxgene_census.open_soma`, so extraction code cannot tell them apart; only the
profile's `census` section differs.
"""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pandas as pd
import scipy.sparse as sp

from sctab.config import ConfigError
from sctab.params_schema import section

# cellxgene_census (tiledbsoma) is imported where a census is opened: it costs seconds at `sctab` start-up.

OBS_COLUMNS = [
    "soma_joinid", "dataset_id", "donor_id", "assay", "cell_type", "cell_type_ontology_term_id",
    "tissue", "tissue_general", "disease", "development_stage", "is_primary_data",
]
VAR_COLUMNS = ["soma_joinid", "feature_id", "feature_name"]


class CensusError(RuntimeError):
    """The census cannot be opened or lacks what the pipeline needs."""


SOURCES = ("embedded", "cellxgene", "h5ad")


def census_description(params: dict) -> str:
    c = section(params, "census")
    if c.source == "h5ad":
        return f"h5ad reference of {len(c.inputs)} file(s)"
    return f"embedded census at {c.uri}" if c.source == "embedded" or c.uri else f"CELLxGENE census {c.version}"


def open_census(params: dict):
    """Open the census named by the params' ``census`` section (a context manager, like cellxgene_census.open_soma)."""
    import cellxgene_census

    c = section(params, "census")
    source = c.source
    if source == "h5ad":
        raise ConfigError("census.source is 'h5ad': a reference of .h5ad files has no SOMA census to open "
                          "(sctab.census.h5ad reads it)")
    if source not in SOURCES:
        raise ConfigError(f"census.source must be one of {', '.join(SOURCES)}, got {source!r}")
    uri = c.uri
    if uri:
        path = Path(uri)
        if "://" not in str(uri) and not path.exists():
            hint = " (build it with `dvc repro census` or `python pipelines/census.py`)" if source == "embedded" else ""
            raise CensusError(f"census path {uri} does not exist{hint}")
        try:
            return cellxgene_census.open_soma(uri=str(uri))
        except Exception as e:  # tiledbsoma raises several types for a folder that is not SOMA
            raise CensusError(f"{uri} is not a readable SOMA census: {e}") from e
    if source == "embedded":
        raise ConfigError("census.source is 'embedded' but census.uri is not set")
    version = c.version
    if not version:
        raise ConfigError("census.version must be set for the cellxgene census (e.g. '2023-05-15')")
    return cellxgene_census.open_soma(census_version=str(version))


def get_experiment(census, params: dict):
    organism = section(params, "census").organism
    try:
        exp = census["census_data"][organism]
    except KeyError:
        raise CensusError(f"the census has no experiment census_data/{organism}") from None
    return exp


CountsReader = Callable[[np.ndarray, np.ndarray], sp.csr_matrix]
"""``read(joinids, var_ids)``: raw counts of those cells (rows, in that order) and genes (columns, in that order)."""


@contextlib.contextmanager
def open_counts(params: dict) -> Iterator[CountsReader]:
    """Open the census of ``params`` and yield a reader of its raw counts (``census.x_layer``, default raw); for
    the h5ad source, a reader of the input files' counts on the profile's genes.

    The store writer takes this reader as an argument, so sctab.data does not need to know about censuses."""
    census_params = section(params, "census")
    if census_params.source == "h5ad":
        from sctab.census.h5ad import open_h5ad_counts  # anndata + h5py: only for this source

        with open_h5ad_counts(params) as read:
            yield read
        return
    with open_census(params) as census:
        X = get_experiment(census, params).ms["RNA"].X[census_params.x_layer]
        yield functools.partial(read_counts, X)


def read_counts(X, joinids: np.ndarray, var_ids: np.ndarray) -> sp.csr_matrix:
    """Raw counts (cells in `joinids` order, genes in `var_ids` order) as CSR, from a SOMA sparse X."""
    order = np.argsort(joinids)
    sorted_ids = joinids[order]
    tbl = X.read(coords=(sorted_ids, np.sort(var_ids))).tables().concat()
    row = tbl.column("soma_dim_0").to_numpy()
    col = tbl.column("soma_dim_1").to_numpy()
    val = tbl.column("soma_data").to_numpy()
    r = np.searchsorted(sorted_ids, row)
    gene_pos = pd.Series(np.arange(len(var_ids)), index=var_ids)
    c = gene_pos.reindex(col).to_numpy()
    m = sp.csr_matrix((val.astype(np.float64), (r, c)), shape=(len(joinids), len(var_ids)))
    inv = np.empty_like(order)
    inv[order] = np.arange(len(order))
    return m[inv]


def check_columns(schema_names, required, what: str) -> None:
    missing = [c for c in required if c not in schema_names]
    if missing:
        raise CensusError(f"census {what} lacks column(s): {', '.join(missing)} (has: {', '.join(schema_names)})")
