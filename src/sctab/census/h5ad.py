"""A labelled reference from .h5ad files (``census.source: h5ad``): obs like the census's, counts streamed.

The files go through the same stages as a census: this module gives extraction an obs table with the
census's columns (plus a running ``soma_joinid``: file after file, row after row) and gives the store
writer a :data:`~sctab.census.source.CountsReader`. Nothing is loaded whole: obs columns are read one by
one, counts one block of rows at a time through h5py.

What it settles, each reported per file in ``filter_report.json``:

- counts: X, a ``counts`` layer or ``.raw.X``, by the rules annotation applies (:mod:`sctab.census.counts`);
- genes: Ensembl ids or symbols (through the bundled GENCODE table) onto the profile's gene set; genes a
  file lacks are zero-filled;
- labels: a Cell Ontology id column, or a free-text column mapped by CL label or exact synonym, with a
  ``label_map`` YAML for the rest (``unknown`` stays unknown and is dropped by the native-cell filter);
- donors: ``census.donor_columns`` (default dataset_id + donor_id; a file without dataset_id is one dataset);
- columns the census has and a plain AnnData may lack (assay, tissue, ...) read ``unknown``.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import scipy.sparse as sp
import yaml

from sctab.census.counts import (
    CountsSource,
    GeneMatch,
    InputError,
    check_block,
    choose_matrix,
    h5ad_matrices,
    match_genes,
    to_model_space,
)
from sctab.census.genes import gencode_genes, read_feature_list
from sctab.census.source import OBS_COLUMNS
from sctab.config import ConfigError
from sctab.params_schema import CensusParams, section

CL_ID = re.compile(r"^CL:\d{7}$")
UNKNOWN = "unknown"
DEFAULT_DONOR_COLUMNS = tuple(CensusParams().donor_columns)  # the schema's default
# census obs columns a file may lack; filled with "unknown" (tissue_general from tissue when only that is there)
DESCRIPTIVE = ("assay", "tissue", "tissue_general", "disease", "development_stage")
READ_BLOCK = 4096  # rows per h5py read when gathering the cells the store asks for


@dataclass(frozen=True)
class H5adSettings:
    inputs: tuple[Path, ...]
    label_column: str | None
    label_map: dict[str, str]
    label_map_path: str | None
    donor_columns: tuple[str, ...]
    layer: str | None
    gene_column: str | None
    allow_non_integer: bool

    @classmethod
    def from_params(cls, params: dict) -> "H5adSettings":
        c = section(params, "census")
        inputs = c.inputs
        if not inputs:
            raise ConfigError("census.source is 'h5ad' but census.inputs lists no file (write params with "
                              "`sctab params --profile reference --input a.h5ad ...`)")
        paths = tuple(Path(p) for p in inputs)
        for p in paths:
            if not p.is_file():
                raise InputError(f"input file {p} (census.inputs) does not exist")
            if p.suffix != ".h5ad":
                raise InputError(f"input {p} (census.inputs) is not an .h5ad file")
        dup = sorted({str(p) for p in paths if paths.count(p) > 1})
        if dup:
            raise ConfigError(f"census.inputs names a file more than once: {dup}")
        donors = c.donor_columns or list(DEFAULT_DONOR_COLUMNS)
        lm_path = c.label_map
        return cls(inputs=paths, label_column=c.label_column, label_map=read_label_map(lm_path),
                   label_map_path=str(lm_path) if lm_path else None, donor_columns=tuple(donors),
                   layer=c.layer, gene_column=c.gene_column, allow_non_integer=c.allow_non_integer)


def read_label_map(path) -> dict[str, str]:
    """``label_map``: a YAML mapping of free-text label -> CL id (or ``unknown`` to drop those cells)."""
    if not path:
        return {}
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"census.label_map {path} does not exist")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"census.label_map {path} must be a YAML mapping of label: CL id")
    bad = {k: v for k, v in data.items() if not (isinstance(v, str) and (CL_ID.match(v) or v == UNKNOWN))}
    if bad:
        raise ConfigError(f"census.label_map {path} maps labels to values that are not CL ids (CL:0000000) "
                          f"or 'unknown': {dict(list(bad.items())[:5])}")
    return {str(k): v for k, v in data.items()}


# ------------------------------------------------------------------------------------------------ genes
def gene_universe(params: dict) -> pd.DataFrame:
    """The profile's gene set before it meets the files: ``genes.feature_list`` in its order, else every
    protein-coding gene of the bundled GENCODE table. ``soma_joinid`` = position here, the id the store uses."""
    g = section(params, "genes")
    table = gencode_genes().drop_duplicates("feature_id")
    if g.feature_list:
        ids = read_feature_list(g.feature_list)
        if len(set(ids)) != len(ids):
            raise ValueError(f"gene list {g.feature_list} has duplicate ids")
        names = table.set_index("feature_id")["feature_name"].reindex(ids)
        out = pd.DataFrame({"feature_id": ids, "feature_name": names.fillna(pd.Series(ids, index=ids)).to_numpy()})
    else:
        if g.biotype != "protein_coding":
            raise ValueError(f"genes.biotype {g.biotype!r} not supported (only protein_coding, or set "
                             "genes.feature_list)")
        out = table.loc[table["feature_biotype"] == "protein_coding", ["feature_id", "feature_name"]]
    out = out.reset_index(drop=True)
    out.insert(0, "soma_joinid", np.arange(len(out), dtype=np.int64))
    return out


# ------------------------------------------------------------------------------------------------ files
@dataclass
class H5adInput:
    """One open input: where its cells sit in the joinid space, its counts and its genes."""

    path: Path
    offset: int
    source: CountsSource
    match: GeneMatch
    file: object = field(repr=False)

    @property
    def n_obs(self) -> int:
        return self.source.n_obs


@contextlib.contextmanager
def open_inputs(params: dict, genes: pd.DataFrame | None = None) -> Iterator[list[H5adInput]]:
    """Open every input, choose its counts matrix and match its genes onto ``genes`` (default: the universe)."""
    import h5py

    s = H5adSettings.from_params(params)
    genes = gene_universe(params) if genes is None else genes
    gene_ids = genes["feature_id"].astype(str).tolist()
    with contextlib.ExitStack() as stack:
        out, offset = [], 0
        for path in s.inputs:
            try:
                f = stack.enter_context(h5py.File(path, "r"))
            except OSError as e:
                raise InputError(f"cannot open {path} as HDF5 (truncated or not an h5ad file?): {e}") from e
            try:
                obs_names, matrices = h5ad_matrices(f, path)
            except InputError:
                raise
            except Exception as e:  # the pre-0.7 layout and damaged files: re-save with a current anndata
                raise InputError(f"cannot read {path} as an AnnData file of anndata >= 0.7 ({e}); re-save it "
                                 f"with anndata.read_h5ad(...).write_h5ad(...)") from e
            source = choose_matrix(obs_names, matrices, layer=s.layer, from_log1p=False,
                                   allow_non_integer=s.allow_non_integer, source=str(path))
            match = match_genes(source.matrix.var, gene_ids, gene_column=s.gene_column, where=str(path))
            out.append(H5adInput(path, offset, source, match, f))
            offset += source.n_obs
        _check_unique_cells(out)
        yield out


def _check_unique_cells(inputs: list[H5adInput]) -> None:
    seen: dict[str, Path] = {}
    for inp in inputs:
        names = pd.Index(inp.source.obs_names.astype(str))
        dup = names[names.duplicated()]
        if len(dup):
            raise InputError(f"{inp.path} has duplicate cell ids (obs_names), e.g. {list(dup[:3])}; make them "
                             f"unique (anndata's obs_names_make_unique)")
        clash = [n for n in names if n in seen]
        if clash:
            raise InputError(f"{inp.path} and {seen[clash[0]]} share {len(clash)} cell id(s), e.g. {clash[:3]}: "
                             f"the same cells in two inputs would be counted twice (drop one file, or give the "
                             f"cells distinct obs_names if they are different cells)")
        seen.update(dict.fromkeys(names, inp.path))


def _obs_column(f, name: str) -> pd.Series | None:
    import anndata.io as aio

    if name not in f["obs"]:
        return None
    values = aio.read_elem(f["obs"][name])
    return pd.Series(np.asarray(values) if not isinstance(values, pd.Categorical) else values.astype(str))


# ----------------------------------------------------------------------------------------------- labels
def _label_column(f, s: H5adSettings, path: Path) -> str:
    cols = [c for c in f["obs"].keys() if c != f["obs"].attrs.get("_index")]
    if s.label_column:
        if s.label_column not in cols:
            raise InputError(f"{path} has no obs column {s.label_column!r} (census.label_column); columns: {cols}")
        return s.label_column
    for c in ("cell_type_ontology_term_id", "cell_type"):
        if c in cols:
            return c
    raise InputError(f"{path} has no cell type column (cell_type_ontology_term_id or cell_type); name the column "
                     f"with census.label_column; columns: {cols}")


def map_labels(values: pd.Series, ontology, label_map: dict[str, str]) -> tuple[pd.Series, dict[str, int]]:
    """CL ids for a label column: ids stay; free text goes through label_map, then CL label/exact synonym.

    Returns the ids (None where unmapped) and the unmapped texts with their cell counts."""
    text = values.astype(str)
    uniq = pd.unique(text)
    mapping: dict[str, str | None] = {}
    for u in uniq:
        if u in label_map:
            mapping[u] = label_map[u]
        elif CL_ID.match(u) or u == UNKNOWN:
            mapping[u] = u
        else:
            ids = ontology.ids_for_name(u)
            mapping[u] = ids[0] if len(ids) == 1 else None
    ids = text.map(mapping)
    unmapped = text[ids.isna()].value_counts()
    return ids, {str(k): int(v) for k, v in unmapped.items()}


# -------------------------------------------------------------------------------------------------- obs
def read_obs(params: dict, ontology) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """(obs of every input cell with the census's columns, selected genes, report) for extraction."""
    s = H5adSettings.from_params(params)
    universe = gene_universe(params)
    frames, per_file, unmapped, texts = [], [], {}, {}
    with open_inputs(params, universe) as inputs:
        found_any = np.zeros(len(universe), dtype=bool)
        for inp in inputs:
            f, path, n = inp.file, inp.path, inp.n_obs
            df = pd.DataFrame({"soma_joinid": np.arange(inp.offset, inp.offset + n, dtype=np.int64)})
            absent = []
            col = _label_column(f, s, path)
            raw = _obs_column(f, col).astype(str)
            ids, missing = map_labels(raw, ontology, s.label_map)
            for k, v in missing.items():
                unmapped.setdefault(k, {})[str(path)] = v
            free_text = not raw.map(lambda t: bool(CL_ID.match(t)) or t == UNKNOWN).all()
            if free_text:
                texts.update({t: i for t, i in zip(raw, ids) if isinstance(i, str)})
            bad = sorted({i for i in ids.dropna() if i != UNKNOWN and i not in ontology})
            if bad:
                raise InputError(f"{path}: obs column {col!r} holds id(s) that are not terms of Cell Ontology "
                                 f"{ontology.version}: {bad[:5]}")
            df["cell_type_ontology_term_id"] = ids.to_numpy()
            df["dataset_id"] = _obs_column(f, "dataset_id") if "dataset_id" in f["obs"] else path.stem
            if "dataset_id" not in f["obs"]:
                absent.append("dataset_id")
            for c in ("donor_id",) + DESCRIPTIVE:
                v = _obs_column(f, c)
                if v is None and c == "tissue_general":
                    v = _obs_column(f, "tissue")
                if v is None:
                    absent.append(c)
                df[c] = UNKNOWN if v is None else v.astype(str).to_numpy()
            prim = _obs_column(f, "is_primary_data")
            df["is_primary_data"] = True if prim is None else prim.astype(bool).to_numpy()
            if prim is None:
                absent.append("is_primary_data")
            groups = []
            for g in s.donor_columns:  # a census column the file lacks reads "unknown": one donor per file
                if g in df.columns:
                    groups.append(df[g].astype(str))
                    continue
                v = _obs_column(f, g)
                if v is None:
                    raise InputError(f"{path} has no obs column {g!r} of census.donor_columns "
                                     f"{list(s.donor_columns)}; name columns every input has")
                groups.append(v.astype(str))
            df["tech_sample"] = groups[0].str.cat(groups[1:], sep="_") if len(groups) > 1 else groups[0]
            df["_file"] = len(frames)
            frames.append(df)
            found_any |= inp.match.columns >= 0
            per_file.append({
                "file": str(path), "cells": n, "matrix": inp.source.matrix.where, "values": inp.source.values,
                "gene_ids": inp.match.id_type, "genes_found": inp.match.n_found,
                "genes_zero_filled": inp.match.n_missing, "label_column": col,
                "labels": "free text mapped to CL" if free_text else "Cell Ontology ids",
                "absent_columns": absent})
    if unmapped:
        lines = "; ".join(f"{lab!r}: " + ", ".join(f"{c} cells in {p}" for p, c in files.items())
                          for lab, files in sorted(unmapped.items(), key=lambda kv: -sum(kv[1].values())))
        raise InputError(
            f"{len(unmapped)} label(s) match no Cell Ontology term by label or exact synonym: {lines}. Map them in "
            f"a YAML file (label: CL id, or 'unknown' to drop those cells) named by census.label_map"
            + (f" (now {s.label_map_path})" if s.label_map_path else ""))
    obs = pd.concat(frames, ignore_index=True)
    labels = {t: ontology.label(t) for t in pd.unique(obs["cell_type_ontology_term_id"]) if t != UNKNOWN}
    obs["cell_type"] = obs["cell_type_ontology_term_id"].map(labels).fillna(UNKNOWN)
    obs = obs[OBS_COLUMNS + ["tech_sample", "_file"]]
    genes = universe
    if section(params, "genes.restrict_to_inputs"):
        genes = universe[found_any].reset_index(drop=True)
    report = {"inputs": per_file, "genes_universe": int(len(universe)),
              "label_mapping": dict(sorted(texts.items()))}
    return obs, genes, report


# ----------------------------------------------------------------------------------------------- counts
@contextlib.contextmanager
def open_h5ad_counts(params: dict) -> Iterator:
    """A CountsReader over the inputs: ``read(joinids, var_ids)`` with var_ids positions in the gene universe."""
    universe = gene_universe(params)
    with open_inputs(params, universe) as inputs:
        starts = np.array([i.offset for i in inputs], dtype=np.int64)
        total = int(starts[-1] + inputs[-1].n_obs)

        def read(joinids: np.ndarray, var_ids: np.ndarray) -> sp.csr_matrix:
            joinids = np.asarray(joinids, dtype=np.int64)
            if len(joinids) and (joinids.min() < 0 or joinids.max() >= total):
                raise InputError(f"cell ids outside the {total} cells of census.inputs: re-run the extract stage")
            which = np.searchsorted(starts, joinids, side="right") - 1
            blocks, order = [], []
            for k in np.unique(which):
                sel = np.flatnonzero(which == k)
                blocks.append(_gather(inputs[k], joinids[sel] - inputs[k].offset, var_ids))
                order.append(sel)
            if not blocks:
                return sp.csr_matrix((0, len(var_ids)))
            out = sp.vstack(blocks, format="csr")
            inv = np.empty(len(joinids), dtype=np.int64)
            inv[np.concatenate(order)] = np.arange(len(joinids))
            return out[inv]

        yield read


def _gather(inp: H5adInput, rows: np.ndarray, var_ids: np.ndarray) -> sp.csr_matrix:
    """Rows (any order) of one input, on the genes ``var_ids``: read in blocks of nearby rows, never whole."""
    cols = inp.match.columns[np.asarray(var_ids, dtype=np.int64)]
    order = np.argsort(rows, kind="stable")
    srt = rows[order]
    parts, i = [], 0
    while i < len(srt):
        a = int(srt[i])
        j = int(np.searchsorted(srt, a + READ_BLOCK, side="left"))
        b = int(srt[j - 1]) + 1
        try:
            block = inp.source.matrix.read(a, b).astype(np.float64)
        except Exception as e:  # truncated chunks, unreadable compression
            raise InputError(f"cannot read rows {a}-{b - 1} of {inp.source.matrix.where} in {inp.path}: {e}") from e
        check_block(block, inp.source.values, (a, b), f"{inp.source.matrix.where} of {inp.path}")
        parts.append(to_model_space(block[srt[i:j] - a], cols))
        i = j
    out = sp.vstack(parts, format="csr")
    inv = np.empty(len(rows), dtype=np.int64)
    inv[order] = np.arange(len(rows))
    return out[inv]
