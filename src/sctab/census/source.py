"""Open a census — the embedded synthetic one or the hosted CELLxGENE census — through one API.

Both go through `cellxgene_census.open_soma`, so extraction code cannot tell them apart; only the
profile's `census` section differs.
"""

from __future__ import annotations

from pathlib import Path

from sctab.config import ConfigError

OBS_COLUMNS = [
    "soma_joinid", "dataset_id", "donor_id", "assay", "cell_type", "cell_type_ontology_term_id",
    "tissue", "tissue_general", "disease", "development_stage", "is_primary_data",
]
VAR_COLUMNS = ["soma_joinid", "feature_id", "feature_name"]


class CensusError(RuntimeError):
    """The census cannot be opened or lacks what the pipeline needs."""


def census_description(params: dict) -> str:
    c = params["census"]
    return f"embedded census at {c.get('uri')}" if c.get("source") == "embedded" or c.get("uri") else \
        f"CELLxGENE census {c.get('version')}"


def open_census(params: dict):
    """Open the census named by `params['census']` (a context manager, like cellxgene_census.open_soma)."""
    import cellxgene_census

    c = params["census"]
    source = c.get("source")
    if source not in ("embedded", "cellxgene"):
        raise ConfigError(f"census.source must be 'embedded' or 'cellxgene', got {source!r}")
    uri = c.get("uri")
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
    version = c.get("version")
    if not version:
        raise ConfigError("census.version must be set for the cellxgene census (e.g. '2023-05-15')")
    return cellxgene_census.open_soma(census_version=str(version))


def get_experiment(census, params: dict):
    organism = params["census"].get("organism", "homo_sapiens")
    try:
        exp = census["census_data"][organism]
    except KeyError:
        raise CensusError(f"the census has no experiment census_data/{organism}") from None
    return exp


def check_columns(schema_names, required, what: str) -> None:
    missing = [c for c in required if c not in schema_names]
    if missing:
        raise CensusError(f"census {what} lacks column(s): {', '.join(missing)} (has: {', '.join(schema_names)})")
