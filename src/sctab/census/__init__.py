"""sctab.census: the census (the embedded synthetic one or the hosted CELLxGENE one) or a reference of .h5ad
files behind one API, extraction with the paper's six cell filters, the model's gene space, the counts and
gene rules shared with annotation, and the generator of the embedded census (in memory, or streamed donor by
donor to SOMA: sctab.census.streaming).

    with open_census(params) as census: ...        # either census, as cellxgene_census.open_soma gives it
    result = sctab.census.extract.extract(params, ontology)   # kept cells, model genes, a report per filter
    with open_counts(params) as read_counts: ...   # raw counts of chosen cells and genes (the store writer's input)

Names are imported on first use, so that ``import sctab.census.filters`` does not load tiledbsoma or anndata.
"""


from sctab.lazy import lazy_namespace

_LAZY = {
    "CensusError": "sctab.census.source", "OBS_COLUMNS": "sctab.census.source", "VAR_COLUMNS": "sctab.census.source",
    "census_description": "sctab.census.source", "open_census": "sctab.census.source",
    "open_counts": "sctab.census.source", "read_counts": "sctab.census.source",
    "Extraction": "sctab.census.extract", "select_genes": "sctab.census.extract",
    "FilterError": "sctab.census.filters", "FilterParams": "sctab.census.filters",
    "add_tech_sample": "sctab.census.filters", "obs_counts": "sctab.census.filters",
    "type_level_filters": "sctab.census.filters",
    "gencode_genes": "sctab.census.genes", "protein_coding_ids": "sctab.census.genes",
    "read_feature_list": "sctab.census.genes",
    "InputError": "sctab.census.counts", "match_genes": "sctab.census.counts",
    "choose_matrix": "sctab.census.counts", "to_model_space": "sctab.census.counts",
    "H5adSettings": "sctab.census.h5ad", "gene_universe": "sctab.census.h5ad", "open_h5ad_counts": "sctab.census.h5ad",
    "read_obs": "sctab.census.h5ad", "value_filter_of": "sctab.census.extract",
    "SyntheticCensusConfig": "sctab.census.synthetic", "build_synthetic_census": "sctab.census.synthetic",
    "generate_census_anndata": "sctab.census.synthetic", "write_census": "sctab.census.synthetic",
    "scaled_to_cells": "sctab.census.synthetic", "expected_cells": "sctab.census.synthetic",
    "write_census_streaming": "sctab.census.streaming", "census_layout": "sctab.census.streaming",
}
__all__ = sorted(_LAZY)
__getattr__, __dir__ = lazy_namespace(__name__, _LAZY)
