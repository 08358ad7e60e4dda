"""Write the embedded synthetic census to SOMA in chunks, with memory flat in the number of cells.

Why: `generate_census_anndata` holds the whole census in memory (~18 KB per cell at 21k genes), which caps the
test bed at a few tens of thousands of cells. This writes the same census (same obs, var and X, value for value)
one donor at a time:

1. a layout pass draws only each donor's cell count (its first draws, `_donor_start`), then the atlas sample with
   the same global generator calls as the in-memory generator, and from both the final row of every cell
   (census rows are stably sorted by dataset id);
2. a generation pass makes each donor's block and writes its rows, and their atlas copies, straight to their final
   soma_joinids. Nothing but the layout (a few int64 per cell) grows with the census.

The per-cell work is vectorised: the scalar draws of each cell (label of a broad type, activation, cycling) stay
in a loop, in the original order, so every number drawn is the same; the 21k-wide arithmetic runs on the block.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
from tqdm.auto import tqdm

from sctab.census.synthetic import (
    SyntheticCensusConfig,
    _add_dataframe,
    _Context,
    _context,
    _donor_start,
    _term_rng,
    _uuid_like,
)
from sctab.census.synthetic_catalog import (
    COARSE_T,
    DEV_STAGES,
    OTHER_ASSAYS,
    SINGLE_DATASET_TYPES,
    TENX_ASSAYS,
    TissueSpec,
)
from sctab.io import atomic_dir

OBS_STRING_COLUMNS = (
    "dataset_id", "donor_id", "assay", "assay_ontology_term_id", "cell_type", "cell_type_ontology_term_id", "tissue",
    "tissue_ontology_term_id", "tissue_general", "disease", "disease_ontology_term_id", "development_stage",
    "development_stage_ontology_term_id",
)
# as tiledbsoma.io.from_anndata writes the in-memory census: obs_id is the AnnData index (the row number)
OBS_SCHEMA = pa.schema([pa.field("soma_joinid", pa.int64(), nullable=False), pa.field("obs_id", pa.large_string())]
                       + [pa.field(c, pa.large_string()) for c in OBS_STRING_COLUMNS]
                       + [pa.field("is_primary_data", pa.bool_())])
ASSAY_IDS = {**TENX_ASSAYS, **OTHER_ASSAYS}
X_TILE = 2048  # tile extent of both X dimensions (tiledbsoma's default, set explicitly: the writer sorts by it)


@dataclass
class CensusLayout:
    """Where every cell of the census goes, known before any counts are drawn."""

    ctx: _Context
    donor_cells: list[list[int]]  # per planned dataset, its donors' cell counts
    donor_offset: np.ndarray  # first generation-order row of each donor (datasets in plan order), then the total
    src: np.ndarray  # generation-order rows copied into the atlas datasets (sorted)
    atlas_of: dict[str, str]  # source dataset id -> atlas dataset id
    joinid: np.ndarray  # final row of each generation-order row, then of each atlas copy (in `src` order)
    datasets: pd.DataFrame  # dataset_id, dataset_total_cell_count, sorted by dataset_id
    n_donors: int  # (dataset, donor) pairs with cells, atlas copies included

    @property
    def n_primary(self) -> int:
        return int(self.donor_offset[-1])

    @property
    def n_obs(self) -> int:
        return self.n_primary + len(self.src)


def census_layout(cfg: SyntheticCensusConfig) -> CensusLayout:
    """Cell counts, atlas sample and final row order of the census of `cfg`, without drawing any counts."""
    ctx = _context(cfg)
    donor_cells = [[_donor_start(cfg, _term_rng(cfg.seed, f"donor:{ds['k']}:{d}"), ctx.G, ctx.lineages)[4]
                    for d in range(ds["n_donors"])] for ds in ctx.plan]
    flat = np.array([n for cells in donor_cells for n in cells], dtype=np.int64)
    donor_offset = np.concatenate([[0], np.cumsum(flat)])
    n_primary = int(donor_offset[-1])
    donor_dataset = np.repeat(np.arange(len(ctx.plan)), [len(c) for c in donor_cells])
    row_dataset = np.repeat(donor_dataset, flat)  # plan index of each generation-order row
    n_sec = int(round(cfg.secondary_fraction * n_primary))
    src = np.sort(ctx.rng.choice(n_primary, size=n_sec, replace=False)) if n_sec else np.zeros(0, dtype=np.int64)
    ds_ids = [ds["dataset_id"] for ds in ctx.plan]
    src_sets = sorted({ds_ids[i] for i in np.unique(row_dataset[src])})
    atlas_of = {d: _uuid_like(cfg.seed, 1000 + i % 2) for i, d in enumerate(src_sets)}
    names = sorted(set(ds_ids) | set(atlas_of.values()))
    code_of = {name: i for i, name in enumerate(names)}
    plan_code = np.array([code_of[d] for d in ds_ids], dtype=np.int64)
    atlas_code = np.array([code_of[atlas_of.get(d, d)] for d in ds_ids], dtype=np.int64)
    codes = np.concatenate([plan_code[row_dataset], atlas_code[row_dataset[src]]])
    del row_dataset
    # census rows are sorted by dataset id, stably: a stable sort of the id's rank gives the same order
    order = np.argsort(codes, kind="stable")
    joinid = np.empty(len(codes), dtype=np.int64)
    joinid[order] = np.arange(len(codes), dtype=np.int64)
    counts = np.bincount(codes, minlength=len(names))
    datasets = pd.DataFrame({"dataset_id": names, "dataset_total_cell_count": counts.astype(np.int64)})
    datasets = datasets[datasets["dataset_total_cell_count"] > 0].reset_index(drop=True)
    src_donor = np.searchsorted(donor_offset, src, side="right") - 1
    n_donors = int((flat > 0).sum()) + len(np.unique(atlas_code[donor_dataset[src_donor]] * len(flat) + src_donor))
    return CensusLayout(ctx, donor_cells, donor_offset, src, atlas_of, joinid, datasets, n_donors)


def _dataset_start(ctx: _Context, ds: dict):
    """A dataset's batch shift, the types it holds and whether it annotates T cells coarsely."""
    t: TissueSpec = ds["tissue"]
    ds_shift = _term_rng(ctx.cfg.seed, f"dataset:{ds['k']}").normal(0, ctx.cfg.dataset_sd, ctx.G)
    types = [ts for ts in t.types if not (ts.term in SINGLE_DATASET_TYPES and ds["index_in_tissue"] > 0)]
    coarse = t.tissue_general == "blood" and ds["index_in_tissue"] in (1, 2)
    return ds_shift, types, coarse


def donor_block(ctx: _Context, ds: dict, d: int, ds_shift: np.ndarray, types: list, coarse: bool):
    """One donor's cells: obs columns (a DataFrame) and counts (dense float32), drawn as the in-memory generator
    draws them."""
    cfg, model, G, t = ctx.cfg, ctx.model, ctx.G, ds["tissue"]
    coarse_label, coarse_of = COARSE_T
    dr = _term_rng(cfg.seed, f"donor:{ds['k']}:{d}")
    donor_eff, lineage_scale, p_activated, p_cycling, n_cells = _donor_start(cfg, dr, G, ctx.lineages)
    w = np.array([ts.weight for ts in types]) * dr.lognormal(0, 0.35, len(types))
    which = dr.choice(len(types), size=n_cells, p=w / w.sum())
    stage = DEV_STAGES[int(dr.integers(len(DEV_STAGES)))]
    tissue_i = int(dr.integers(len(t.tissues)))
    # the scalar draws of each cell, in the generator's order: true term of a broad label, activation, cycling
    true_terms, labels = [], []
    activated = np.empty(n_cells, dtype=bool)
    cycling = np.empty(n_cells, dtype=bool)
    for i, ti in enumerate(which.tolist()):
        ts = types[ti]
        true_term = ts.term if not ts.expression_of else ts.expression_of[int(dr.integers(len(ts.expression_of)))]
        true_terms.append(true_term)
        labels.append(coarse_label if coarse and true_term in coarse_of else ts.term)
        activated[i] = dr.random() < p_activated
        cycling[i] = dr.random() < p_cycling
    # the same per-cell sums as the generator's loop, in the same order, over the whole block
    distinct = sorted(set(true_terms))
    where = {x: i for i, x in enumerate(distinct)}
    term_idx = np.array([where[x] for x in true_terms], dtype=np.int64)
    eta = np.stack([model.ancestor_program(x) for x in distinct])[term_idx] if n_cells else np.empty((0, G))
    eta[activated] += model.state_effects["activated"]
    eta[cycling] += model.state_effects["cycling"]
    cell_group = [ctx.group_of.get(x) for x in true_terms]
    module_of = np.full(n_cells, -1, dtype=np.int64)
    for i, (x, g) in enumerate(zip(true_terms, cell_group)):
        if g in ctx.groups and len(ctx.groups[g]) > 1:  # XOR-like: the module a type shows flips with activation
            members = ctx.groups[g]
            module_of[i] = (members.index(x) + int(activated[i])) % len(members)
    for g in sorted({g for g, m in zip(cell_group, module_of) if m >= 0}):
        members = ctx.groups[g]
        mods = model.modules(g, len(members))
        in_group = np.array([cg == g for cg in cell_group])
        for j in np.unique(module_of[in_group]):
            eta[in_group & (module_of == j)] += mods[j]
    scale = np.array([lineage_scale.get(g, 1.0) for g in cell_group], dtype=np.float64)
    eta += donor_eff[None, :] * scale[:, None]
    eta += ds_shift + model.base + ctx.assay_gene[ds["assay"]]
    mean = eta.mean(axis=1, keepdims=True)
    eta -= mean
    eta *= ctx.assay_alpha[ds["assay"]]
    eta += mean
    eta[:, ~ctx.is_coding] -= 1.0  # non-coding genes: lower but present
    eta -= eta.max(axis=1, keepdims=True)
    p = np.exp(eta, out=eta)
    p /= p.sum(axis=1, keepdims=True)
    lib = dr.lognormal(np.log(cfg.library_size * (2.0 if ds["assay"] == "Smart-seq2" else 1.0)), 0.45, n_cells)
    p *= lib[:, None]  # mu
    theta = model.dispersion[None, :]
    p /= theta
    rates = dr.gamma(theta, p)
    del p, eta
    counts = dr.poisson(rates).astype(np.float32)
    del rates
    empty = counts.sum(axis=1) == 0
    counts[empty, int(np.argmax(model.base))] = 1.0
    labels = np.array(labels, dtype=object).astype(str)
    cl = ctx.cl
    obs = pd.DataFrame({
        "dataset_id": ds["dataset_id"], "donor_id": f"donor_{ds['k']:02d}_{d:02d}",
        "assay": ds["assay"], "assay_ontology_term_id": ASSAY_IDS[ds["assay"]],
        "cell_type": [cl[x]["label"] if x in cl else "unknown" for x in labels],
        "cell_type_ontology_term_id": labels,
        "tissue": t.tissues[tissue_i], "tissue_ontology_term_id": t.tissue_ids[tissue_i],
        "tissue_general": t.tissue_general,
        "disease": ds["disease"][0], "disease_ontology_term_id": ds["disease"][1],
        "development_stage": stage[0], "development_stage_ontology_term_id": stage[1],
        "is_primary_data": True,
    }, index=pd.RangeIndex(n_cells))
    return obs, counts


class _Chunks:
    """Buffers obs rows and X entries (at their final soma_joinids) and writes them in a few large fragments."""

    def __init__(self, obs, X, flush_nnz: int):
        self.obs, self.X, self.flush_nnz = obs, X, flush_nnz
        self.frames: list[pd.DataFrame] = []
        self.coo: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self.nnz = 0
        self.written_nnz = 0
        self.fragments = 0
        import tiledbsoma

        self._global_order = tiledbsoma.TileDBWriteOptions(sort_coords=False)

    def add(self, obs: pd.DataFrame, joinid: np.ndarray, rows: np.ndarray, cols: np.ndarray, data: np.ndarray):
        obs = obs.copy()
        obs.insert(0, "obs_id", joinid.astype(str))
        obs.insert(0, "soma_joinid", joinid)
        self.frames.append(obs)
        self.coo.append((joinid[rows], cols, data))
        self.nnz += len(data)
        if self.nnz >= self.flush_nnz:
            self.flush()

    def flush(self):
        if not self.frames:
            return
        obs = pd.concat(self.frames, ignore_index=True)
        self.obs.write(pa.Table.from_pandas(obs, schema=OBS_SCHEMA, preserve_index=False))
        dim0, dim1, data = (np.concatenate(parts) for parts in zip(*self.coo))
        dim1 = dim1.astype(np.int64)
        # TileDB's global order (row-major tiles, row-major cells): sorting here spares its slower unordered write
        n_col_tiles = -(-self.X.shape[1] // X_TILE)
        key = (dim0 // X_TILE * n_col_tiles + dim1 // X_TILE) * X_TILE * X_TILE + dim0 % X_TILE * X_TILE + dim1 % X_TILE
        order = np.argsort(key)
        del key
        self.X.write(pa.Table.from_arrays([pa.array(dim0[order]), pa.array(dim1[order]), pa.array(data[order])],
                                          names=["soma_dim_0", "soma_dim_1", "soma_data"]),
                     platform_config=self._global_order)
        self.written_nnz += self.nnz
        self.fragments += 1
        self.frames, self.coo, self.nnz = [], [], 0


def write_census_streaming(cfg: SyntheticCensusConfig, uri: str | Path, *, flush_nnz: int = 1 << 22,
                           progress: bool | None = None) -> dict:
    """Generate and write the census of `cfg` donor by donor (atomically: temp folder, then rename); returns the
    same summary as `generate_census_anndata`. `flush_nnz`: X entries buffered before a write (one fragment)."""
    import tiledbsoma  # seconds to import; only writing a census needs it

    if flush_nnz < 1:
        raise ValueError(f"flush_nnz must be a positive number of X entries, got {flush_nnz}")
    layout = census_layout(cfg)
    ctx, n_obs, G = layout.ctx, layout.n_obs, layout.ctx.G
    if n_obs == 0:
        raise ValueError("the synthetic census has no cells: synthetic.cells_per_donor draws 0 cells for every donor")
    labels: set[str] = set()
    uri = Path(uri)
    with atomic_dir(uri) as tmp, tiledbsoma.Collection.create(str(tmp)) as root:
        root.metadata["created_by"] = "sctab synthetic census"
        root.metadata["census_schema_version"] = "synthetic-1"
        census_data = root.add_new_collection("census_data")
        exp = census_data.add_new_collection("homo_sapiens", tiledbsoma.Experiment)
        obs = exp.add_new_dataframe("obs", schema=OBS_SCHEMA, index_column_names=["soma_joinid"],
                                    domain=[(0, n_obs - 1)])
        obs.metadata["soma_dataframe_original_index_name"] = "null"
        rna = exp.add_new_collection("ms").add_new_collection("RNA", tiledbsoma.Measurement)
        var = ctx.var.copy()
        var.insert(0, "var_id", var["feature_id"])
        _add_dataframe(rna, "var", var)
        X = rna.add_new_collection("X").add_new_sparse_ndarray(
            "raw", type=pa.float32(), shape=(n_obs, G), platform_config=tiledbsoma.TileDBCreateOptions(
                dims={"soma_dim_0": {"tile": X_TILE}, "soma_dim_1": {"tile": X_TILE}}))
        chunks = _Chunks(obs, X, flush_nnz)
        bar = tqdm(total=n_obs, desc="census cells", unit="cell", unit_scale=True,
                   disable=None if progress is None else not progress,
                   mininterval=0.1 if sys.stderr.isatty() else 30)  # a log (dvc repro) gets a line per 30 s
        di = 0  # donor index over the whole plan (generation order)
        for ds in ctx.plan:
            ds_shift, types, coarse = _dataset_start(ctx, ds)
            for d in range(ds["n_donors"]):
                start, stop = int(layout.donor_offset[di]), int(layout.donor_offset[di + 1])
                di += 1
                if stop == start:
                    continue
                block, counts = donor_block(ctx, ds, d, ds_shift, types, coarse)
                if len(block) != stop - start:
                    raise AssertionError(f"donor {d} of dataset {ds['k']}: {len(block)} cells drawn, layout has "
                                         f"{stop - start}")
                labels.update(block["cell_type_ontology_term_id"])
                rows, cols = np.nonzero(counts)
                data = counts[rows, cols]
                del counts
                chunks.add(block, layout.joinid[start:stop], rows, cols, data)
                # atlas copies of some of these cells: same counts, new dataset id, not primary
                lo, hi = np.searchsorted(layout.src, [start, stop])
                if hi > lo:
                    local = layout.src[lo:hi] - start
                    sec_joinid = np.full(stop - start, -1, dtype=np.int64)
                    sec_joinid[local] = layout.joinid[layout.n_primary + lo:layout.n_primary + hi]
                    copy = block.iloc[local].reset_index(drop=True)
                    copy["dataset_id"] = layout.atlas_of[ds["dataset_id"]]
                    copy["is_primary_data"] = False
                    keep = sec_joinid[rows] >= 0
                    # rows index the copy's own order: position of each kept row among `local`
                    pos = np.full(stop - start, -1, dtype=np.int64)
                    pos[local] = np.arange(hi - lo)
                    chunks.add(copy, sec_joinid[local], pos[rows[keep]], cols[keep], data[keep])
                bar.update(stop - start + hi - lo)
        chunks.flush()
        bar.close()
        info = {"n_cells": n_obs, "n_genes": G, "n_protein_coding": int(ctx.cfg.n_genes),
                "n_datasets": len(layout.datasets), "n_donors": layout.n_donors, "n_cell_type_labels": len(labels),
                "density": float(chunks.written_nnz / (n_obs * G))}
        info_coll = root.add_new_collection("census_info")
        _add_dataframe(info_coll, "summary", pd.DataFrame({"label": list(info), "value": [str(v) for v in
                                                                                         info.values()]}))
        _add_dataframe(info_coll, "datasets", layout.datasets)
    return info


