"""The embedded default census: a synthetic CELLxGENE-like census written in the real SOMA format.

Why synthetic: the real census cannot be reached here, but the extraction code must be the same for
both. So this writes a SOMA collection laid out like the census (`census_info`, `census_data/
homo_sapiens` with obs and `ms/RNA` holding var and raw integer counts in X layer `raw`) that
`cellxgene_census.open_soma(uri=...)` opens.

What makes it behave like real data (and makes every filter of the paper do something):
- real Cell Ontology terms (bundled CL) and real GENCODE protein-coding gene ids, plus some
  non-coding genes that the protein-coding gene selection must drop;
- cell-type programs that follow the ontology: a term's log-expression is the sum of effects of its
  ancestors, so a subtype shares its parent's program and siblings differ only in a few genes;
- type x state interactions: within a sibling group, which marker module a type expresses depends on
  the cell's state (resting / activated / cycling), an XOR-like pattern that a linear model on
  log-expression cannot fully resolve but a nonlinear one can;
- donor effects scaled per lineage (donor x lineage interaction), assay-specific capture efficiencies
  and dynamic-range compression (not additive in log space), dataset batch shifts;
- negative-binomial counts with log-normal library sizes, 10x-like sparsity;
- non-primary duplicate cells (atlas re-uploads), non-10x datasets, non-CL labels ("unknown"),
  broad labels with few ontology ancestors, rare types, and types seen in too few donors.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, fields, replace
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pyarrow as pa
import scipy.sparse as sp
from tqdm.auto import tqdm

from sctab.census.genes import gencode_genes, protein_coding_ids
from sctab.census.synthetic_catalog import (
    COARSE_T,
    DEV_STAGES,
    DISEASES,
    OTHER_ASSAYS,
    SINGLE_DATASET_TYPES,
    STATES,
    TENX_ASSAYS,
    TISSUES,
    TissueSpec,
    TypeSpec,
)
from sctab.io import atomic_dir
from sctab.ontology.bundled import load_bundled_cl
from sctab.params_schema import OntologyParams, SyntheticParams, section


@dataclass(frozen=True)
class SyntheticCensusConfig(SyntheticParams):
    """The generator's settings: the params' ``synthetic`` section (sctab.params_schema holds the keys and their
    defaults) plus the Cell Ontology release whose terms it draws."""

    cl_version: str = OntologyParams.cl_version

    @classmethod
    def from_params(cls, params: dict) -> "SyntheticCensusConfig":
        syn = section(params, "synthetic") or SyntheticParams()
        return cls(**{f.name: getattr(syn, f.name) for f in fields(SyntheticParams)},
                   cl_version=section(params, "ontology.cl_version"))


def _term_rng(seed: int, key: str) -> np.random.Generator:
    """A generator seeded by (seed, key): effects of a term do not depend on which other terms exist."""
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def _sparse_effect(rng: np.random.Generator, n_genes: int, n_hit: int, lfc: float, neg_frac: float = 0.2,
                   pool: np.ndarray | None = None) -> np.ndarray:
    """`n_hit` genes (from `pool` if given) shifted by gamma-distributed log-fold changes around `lfc`."""
    eff = np.zeros(n_genes, dtype=np.float64)
    pool = np.arange(n_genes) if pool is None else pool
    idx = rng.choice(pool, size=min(n_hit, len(pool)), replace=False)
    signs = np.where(rng.random(idx.size) < neg_frac, -1.0, 1.0)
    eff[idx] = signs * rng.gamma(shape=4.0, scale=lfc / 4.0, size=idx.size)
    return eff


class _ExpressionModel:
    """Log-rate programs for types, states, donors, assays and datasets."""

    def __init__(self, cfg: SyntheticCensusConfig, cl: dict, n_genes: int):
        self.cfg, self.cl, self.G = cfg, cl, n_genes
        rng = _term_rng(cfg.seed, "base")
        # heavy-tailed baseline: a few very high genes, most low (10x-like sparsity after sampling)
        self.base = rng.normal(-0.5, 2.2, n_genes)
        self.dispersion = np.exp(rng.normal(np.log(1.5), 0.6, n_genes))  # NB theta per gene
        # markers of states and modules are genes that are actually detected (upper 40% of baseline)
        self.expressed = np.flatnonzero(self.base >= np.quantile(self.base, 0.6))
        self.state_effects = {s: _sparse_effect(_term_rng(cfg.seed, f"state:{s}"), n_genes, max(8, n_genes // 60),
                                                cfg.state_lfc, 0.0, self.expressed)
                              for s in STATES[1:]}
        self._programs: dict[str, np.ndarray] = {}
        self._modules: dict[str, np.ndarray] = {}
        self._lineage_of: dict[str, str] = {}

    def ancestor_program(self, term: str) -> np.ndarray:
        """Sum of effects of the term and its ancestors; deeper terms touch fewer genes."""
        if term in self._programs:
            return self._programs[term]
        cfg, G = self.cfg, self.G
        prog = np.zeros(G)
        anc = self.cl[term]["ancestors"]
        for a, dist in anc.items():
            depth = len(self.cl[a]["ancestors"]) if a in self.cl else 0
            if depth < 2:  # 'cell', 'eukaryotic cell' ...: shared by all, no information
                continue
            n_hit = max(4, int(G * 0.03 / (1 + 0.15 * depth)))
            lfc = cfg.ancestor_lfc * max(0.25, 1.0 - depth / 14.0)
            prog += _sparse_effect(_term_rng(cfg.seed, f"term:{a}"), G, n_hit, lfc)
        prog += _sparse_effect(_term_rng(cfg.seed, f"own:{term}"), G, max(4, G // 250), cfg.own_lfc)
        self._programs[term] = prog
        return prog

    def modules(self, group: str, n: int) -> np.ndarray:
        """`n` marker modules shared by a sibling group (which one a type uses depends on its state)."""
        key = f"{group}:{n}"
        if key not in self._modules:
            rng = _term_rng(self.cfg.seed, f"modules:{group}")
            self._modules[key] = np.stack([_sparse_effect(rng, self.G, max(6, self.G // 150), self.cfg.module_lfc, 0.0,
                                                          self.expressed) for _ in range(n)])
        return self._modules[key]


def _pick_genes(cfg: SyntheticCensusConfig) -> pd.DataFrame:
    genes = gencode_genes()
    rng = np.random.default_rng(cfg.seed)
    pc = genes[genes["feature_biotype"] == "protein_coding"]
    nc = genes[genes["feature_biotype"] == "lncRNA"]
    n_nc = cfg.n_noncoding_genes if cfg.n_noncoding_genes is not None else max(1, cfg.n_genes // 10)
    if cfg.n_genes > len(pc):
        raise ValueError(f"synthetic.n_genes={cfg.n_genes} exceeds the {len(pc)} protein-coding genes of GENCODE")
    chosen = pd.concat([pc.iloc[np.sort(rng.choice(len(pc), cfg.n_genes, replace=False))],
                        nc.iloc[np.sort(rng.choice(len(nc), n_nc, replace=False))]])
    chosen = chosen.sort_values("feature_id").reset_index(drop=True)
    return pd.DataFrame({
        "feature_id": chosen["feature_id"].astype(str).to_numpy(),
        "feature_name": chosen["feature_name"].astype(str).to_numpy(),
        "feature_length": chosen["feature_length"].astype(np.int64).to_numpy(),
    })


def tissue_specs(cfg: SyntheticCensusConfig, cl: dict) -> tuple[TissueSpec, ...]:
    """The hand-picked tissues plus `cfg.extra_types` further real CL terms (>= 8 ancestors), round-robin."""
    if cfg.extra_types <= 0:
        return TISSUES
    used = {ts.term for t in TISSUES for ts in t.types} | {COARSE_T[0]}
    pool = sorted(t for t, m in cl.items() if not m["deprecated"] and len(m["ancestors"]) >= 8 and t not in used)
    if cfg.extra_types > len(pool):
        raise ValueError(f"synthetic.extra_types={cfg.extra_types} exceeds the {len(pool)} eligible CL terms")
    pick = sorted(_term_rng(cfg.seed, "extra-types").choice(len(pool), cfg.extra_types, replace=False))
    extra: dict[int, list[TypeSpec]] = {}
    for i, j in enumerate(pick):
        extra.setdefault(i % len(TISSUES), []).append(TypeSpec(pool[j], f"extra:{pool[j]}", 0.5))
    return tuple(replace(t, types=t.types + tuple(extra.get(k, ()))) for k, t in enumerate(TISSUES))


def _datasets_per_tissue(n_datasets: int, tissues=TISSUES) -> dict[str, int]:
    """`n_datasets` spread over the tissues in proportion to their specs' numbers, at least 2 each."""
    slots = [t for t in tissues for _ in range(t.n_datasets)]
    scale = max(n_datasets, 1) / len(slots)
    return {t.tissue_general: max(2, int(round(t.n_datasets * scale))) for t in tissues}


def _dataset_plan(cfg: SyntheticCensusConfig, rng: np.random.Generator, tissues=TISSUES) -> list[dict]:
    """Assign datasets to tissues (at least the spec's number each), assays and donors."""
    n_per = _datasets_per_tissue(cfg.n_datasets, tissues)
    plan = []
    tenx = list(TENX_ASSAYS)
    others = list(OTHER_ASSAYS)
    k = 0
    for t in tissues:
        for j in range(n_per[t.tissue_general]):
            is_10x = j > 0 and rng.random() < cfg.non10x_fraction  # the first dataset of a tissue is 10x
            assay = others[k % len(others)] if is_10x else tenx[k % len(tenx)]
            disease = DISEASES[1] if (t.tissue_general == "lung" and j == 1) else (
                DISEASES[2] if (t.tissue_general == "lung" and j == 2) else DISEASES[0])
            n_donors = int(rng.integers(cfg.donors_per_dataset[0], cfg.donors_per_dataset[1] + 1))
            plan.append({"dataset_id": _uuid_like(cfg.seed, k), "tissue": t, "assay": assay, "disease": disease,
                         "n_donors": n_donors, "index_in_tissue": j, "k": k})
            k += 1
    return plan


def _uuid_like(seed: int, k: int) -> str:
    h = hashlib.sha256(f"dataset:{seed}:{k}".encode()).hexdigest()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"


def expected_cells(cfg: SyntheticCensusConfig) -> float:
    """Expected number of census rows (atlas copies included) of `cfg`: planned datasets x mean donors x mean
    cells per donor x (1 + secondary_fraction)."""
    n_plan = sum(_datasets_per_tissue(cfg.n_datasets).values())
    mean_donors = (cfg.donors_per_dataset[0] + cfg.donors_per_dataset[1]) / 2
    mean_cells = (cfg.cells_per_donor[0] + cfg.cells_per_donor[1]) / 2
    return n_plan * mean_donors * mean_cells * (1 + cfg.secondary_fraction)


MIN_SCALED_CELLS = 1000
MAX_SCALED_DATASETS = 900


def scaled_to_cells(cfg: SyntheticCensusConfig, n_cells: int) -> dict:
    """n_datasets, donors_per_dataset and cells_per_donor for a census of about `n_cells` rows.

    The rule (`sctab params --cells`): with s = n_cells / expected_cells(cfg), datasets grow as sqrt(s) (at most
    900), donors per dataset as s^(1/4), and cells per donor take the rest, so that the expected total is n_cells;
    the ranges keep the profile's low:high ratios. A bigger census has more datasets and donors, not only bigger
    donors (a donor's block is what the writer holds in memory)."""
    if isinstance(n_cells, bool) or not isinstance(n_cells, (int, np.integer)) or n_cells < MIN_SCALED_CELLS:
        raise ValueError(f"the census size must be a whole number of cells >= {MIN_SCALED_CELLS}, got {n_cells!r}")
    base = expected_cells(cfg)
    if base <= 0:
        raise ValueError("the profile's synthetic census is empty (cells_per_donor or donors_per_dataset are 0): "
                         "nothing to scale")
    s = n_cells / base
    n_datasets = int(min(MAX_SCALED_DATASETS, max(1, round(cfg.n_datasets * s ** 0.5))))
    d_lo, d_hi = cfg.donors_per_dataset
    donors = [max(1, int(round(d_lo * s ** 0.25))), max(1, int(round(d_hi * s ** 0.25)))]
    n_plan = sum(_datasets_per_tissue(n_datasets).values())
    mean_cells = n_cells / (n_plan * (donors[0] + donors[1]) / 2 * (1 + cfg.secondary_fraction))
    c_lo, c_hi = cfg.cells_per_donor
    ratio = c_hi / max(c_lo, 1)
    lo = 2 * mean_cells / (1 + ratio)
    cells = [max(1, int(round(lo))), max(1, int(round(lo * ratio)))]
    return {"n_datasets": n_datasets, "donors_per_dataset": donors, "cells_per_donor": cells}


MAX_PLAN_DATASETS = 1000  # dataset ids from k = 1000 on are the atlas re-uploads


@dataclass
class _Context:
    """What every donor block of a census needs: genes, expression model, dataset plan, assay effects, groups.

    Built once and shared by the in-memory generator and the streaming writer, so both draw the same numbers."""

    cfg: SyntheticCensusConfig
    cl: dict
    var: pd.DataFrame
    is_coding: np.ndarray
    model: _ExpressionModel
    rng: np.random.Generator  # the global generator: dataset plan, then the atlas sample
    tissues: tuple[TissueSpec, ...]
    plan: list[dict]
    assay_gene: dict
    assay_alpha: dict
    groups: dict[str, list[str]]
    lineages: list[str]
    group_of: dict[str, str]

    @property
    def G(self) -> int:
        return len(self.var)


def _context(cfg: SyntheticCensusConfig) -> _Context:
    cl = load_bundled_cl(cfg.cl_version)
    var = _pick_genes(cfg)
    # a hash lookup: np.isin on object arrays sorts them (9 s at 21k genes)
    is_coding = var["feature_id"].isin(protein_coding_ids()).to_numpy()
    G = len(var)
    model = _ExpressionModel(cfg, cl, G)
    rng = np.random.default_rng(cfg.seed + 1)
    tissues = tissue_specs(cfg, cl)
    plan = _dataset_plan(cfg, rng, tissues)
    if len(plan) >= MAX_PLAN_DATASETS:
        raise ValueError(f"synthetic.n_datasets={cfg.n_datasets} plans {len(plan)} datasets; at most "
                         f"{MAX_PLAN_DATASETS - 1} fit (dataset ids from {MAX_PLAN_DATASETS} on are the atlas copies)")
    assays = {**TENX_ASSAYS, **OTHER_ASSAYS}
    assay_gene = {a: _term_rng(cfg.seed, f"assay:{a}").normal(0, cfg.assay_sd, G) for a in assays}
    assay_alpha = {a: float(_term_rng(cfg.seed, f"alpha:{a}").uniform(0.8, 1.1)) for a in assays}
    groups: dict[str, list[str]] = {}
    for t in tissues:
        for ts in t.types:
            if ts.term != "unknown" and not ts.expression_of and ts.term not in groups.setdefault(ts.group, []):
                groups[ts.group].append(ts.term)
    lineages = sorted(groups)
    group_of = {term: g for g, members in groups.items() for term in members}
    return _Context(cfg, cl, var, is_coding, model, rng, tissues, plan, assay_gene, assay_alpha, groups, lineages,
                    group_of)


def _donor_start(cfg: SyntheticCensusConfig, dr: np.random.Generator, G: int, lineages: list[str]):
    """A donor's first draws, up to its cell count: the streaming writer's layout pass needs only these."""
    donor_eff = dr.normal(0, cfg.donor_sd, G) * (dr.random(G) < 0.3)
    lineage_scale = {g: dr.uniform(0.0, 2.0) for g in lineages}
    p_activated = dr.uniform(0.3, 0.7)
    p_cycling = dr.uniform(0.02, 0.15)
    n_cells = int(dr.integers(cfg.cells_per_donor[0], cfg.cells_per_donor[1] + 1))
    return donor_eff, lineage_scale, p_activated, p_cycling, n_cells


def generate_census_anndata(cfg: SyntheticCensusConfig) -> tuple[ad.AnnData, dict]:
    """Generate the census content in memory (cells x genes raw counts, obs and var like the census).

    The reference for the streaming writer (sctab.census.streaming), which writes the same census in chunks."""
    ctx = _context(cfg)
    cl, var, is_coding, G, model, rng, plan = ctx.cl, ctx.var, ctx.is_coding, ctx.G, ctx.model, ctx.rng, ctx.plan
    n_pc = cfg.n_genes
    assay_gene, assay_alpha, groups, lineages, group_of = (ctx.assay_gene, ctx.assay_alpha, ctx.groups, ctx.lineages,
                                                           ctx.group_of)

    obs_parts, x_parts = [], []
    coarse_label, coarse_of = COARSE_T
    for ds in tqdm(plan, desc="census datasets", unit="dataset", disable=None):
        t: TissueSpec = ds["tissue"]
        drng = _term_rng(cfg.seed, f"dataset:{ds['k']}")
        ds_shift = drng.normal(0, cfg.dataset_sd, G)
        types = [ts for ts in t.types if not (ts.term in SINGLE_DATASET_TYPES and ds["index_in_tissue"] > 0)]
        coarse = t.tissue_general == "blood" and ds["index_in_tissue"] in (1, 2)
        for d in range(ds["n_donors"]):
            donor_id = f"donor_{ds['k']:02d}_{d:02d}"
            dr = _term_rng(cfg.seed, f"donor:{ds['k']}:{d}")
            donor_eff, lineage_scale, p_activated, p_cycling, n_cells = _donor_start(cfg, dr, G, lineages)
            w = np.array([ts.weight for ts in types]) * dr.lognormal(0, 0.35, len(types))
            which = dr.choice(len(types), size=n_cells, p=w / w.sum())
            stage = DEV_STAGES[int(dr.integers(len(DEV_STAGES)))]
            tissue_i = int(dr.integers(len(t.tissues)))
            eta = np.empty((n_cells, G))
            labels = np.empty(n_cells, dtype=object)
            for i, ti in enumerate(which):
                ts = types[ti]
                true_term = (ts.term if not ts.expression_of
                             else ts.expression_of[int(dr.integers(len(ts.expression_of)))])
                label = ts.term
                if coarse and true_term in coarse_of:
                    label = coarse_label
                labels[i] = label
                eta[i] = model.ancestor_program(true_term)
                # state-dependent marker module (type x state interaction)
                tspec_group = group_of.get(true_term)
                activated = bool(dr.random() < p_activated)
                if activated:
                    eta[i] += model.state_effects["activated"]
                if dr.random() < p_cycling:
                    eta[i] += model.state_effects["cycling"]
                if tspec_group in groups and len(groups[tspec_group]) > 1:
                    # XOR-like: the module a type shows flips with activation
                    members = groups[tspec_group]
                    mods = model.modules(tspec_group, len(members))
                    eta[i] += mods[(members.index(true_term) + int(activated)) % len(members)]
                eta[i] += donor_eff * lineage_scale.get(tspec_group, 1.0)
            eta += ds_shift + model.base + assay_gene[ds["assay"]]
            eta = eta.mean(axis=1, keepdims=True) + assay_alpha[ds["assay"]] * (eta - eta.mean(axis=1, keepdims=True))
            eta[:, ~is_coding] -= 1.0  # non-coding genes: lower but present
            p = np.exp(eta - eta.max(axis=1, keepdims=True))
            p /= p.sum(axis=1, keepdims=True)
            lib = dr.lognormal(np.log(cfg.library_size * (2.0 if ds["assay"] == "Smart-seq2" else 1.0)), 0.45, n_cells)
            mu = p * lib[:, None]
            theta = model.dispersion[None, :]
            counts = dr.poisson(dr.gamma(theta, mu / theta)).astype(np.float32)
            empty = counts.sum(axis=1) == 0
            counts[empty, int(np.argmax(model.base))] = 1.0
            x_parts.append(sp.csr_matrix(counts))
            obs_parts.append(pd.DataFrame({
                "dataset_id": ds["dataset_id"], "donor_id": donor_id,
                "assay": ds["assay"], "assay_ontology_term_id": {**TENX_ASSAYS, **OTHER_ASSAYS}[ds["assay"]],
                "cell_type": [cl[x]["label"] if x in cl else "unknown" for x in labels],
                "cell_type_ontology_term_id": labels.astype(str),
                "tissue": t.tissues[tissue_i], "tissue_ontology_term_id": t.tissue_ids[tissue_i],
                "tissue_general": t.tissue_general,
                "disease": ds["disease"][0], "disease_ontology_term_id": ds["disease"][1],
                "development_stage": stage[0], "development_stage_ontology_term_id": stage[1],
                "is_primary_data": True,
            }))
    obs = pd.concat(obs_parts, ignore_index=True)
    X = sp.vstack(x_parts, format="csr")

    # atlas re-uploads: copies of primary cells under new dataset ids, is_primary_data False
    n_sec = int(round(cfg.secondary_fraction * obs.shape[0]))
    if n_sec:
        src = np.sort(rng.choice(obs.shape[0], size=n_sec, replace=False))
        sec = obs.iloc[src].copy()
        sec["is_primary_data"] = False
        atlas = {d: _uuid_like(cfg.seed, 1000 + i % 2) for i, d in enumerate(sorted(sec["dataset_id"].unique()))}
        sec["dataset_id"] = sec["dataset_id"].map(atlas)
        obs = pd.concat([obs, sec], ignore_index=True)
        X = sp.vstack([X, X[src]], format="csr")

    # census row order is by dataset; keep it stable and deterministic
    order = np.argsort(obs["dataset_id"].to_numpy(), kind="stable")
    obs = obs.iloc[order].reset_index(drop=True)
    X = X[order]
    for c in obs.columns:
        if obs[c].dtype == object:
            obs[c] = obs[c].astype(str)
    obs.index = obs.index.astype(str)
    var.index = var["feature_id"].to_numpy()
    X.data = X.data.astype(np.float32)
    adata = ad.AnnData(X=X, obs=obs, var=var)
    info = {"n_cells": int(adata.n_obs), "n_genes": int(adata.n_vars), "n_protein_coding": int(n_pc),
            "n_datasets": int(obs["dataset_id"].nunique()),
            "n_donors": int((obs["dataset_id"] + "_" + obs["donor_id"]).nunique()),
            "n_cell_type_labels": int(obs["cell_type_ontology_term_id"].nunique()),
            "density": float(X.nnz / (X.shape[0] * X.shape[1]))}
    return adata, info


def write_census(adata: ad.AnnData, uri: str | Path, info: dict | None = None) -> Path:
    """Write an AnnData as a census-shaped SOMA collection (atomically: temp folder, then rename)."""
    import tiledbsoma  # seconds to import; only writing a census needs it
    import tiledbsoma.io

    uri = Path(uri)
    with atomic_dir(uri) as tmp:
        with tiledbsoma.Collection.create(str(tmp)) as root:
            root.metadata["created_by"] = "sctab synthetic census"
            root.metadata["census_schema_version"] = "synthetic-1"
            info_coll = root.add_new_collection("census_info")
            summary = pd.DataFrame({"label": list((info or {}).keys()),
                                    "value": [str(v) for v in (info or {}).values()]})
            _add_dataframe(info_coll, "summary", summary)
            ds = adata.obs.groupby("dataset_id", observed=True).agg(
                dataset_total_cell_count=("assay", "size")).reset_index()
            _add_dataframe(info_coll, "datasets", ds)
            root.add_new_collection("census_data")
        exp_uri = str(tmp / "census_data" / "homo_sapiens")
        tiledbsoma.io.from_anndata(exp_uri, adata, measurement_name="RNA", X_layer_name="raw",
                                   obs_id_name="obs_id", var_id_name="var_id")
        with tiledbsoma.Collection.open(str(tmp / "census_data"), "w") as cd:
            cd.set("homo_sapiens", tiledbsoma.Experiment.open(exp_uri), use_relative_uri=True)
    return uri


def _add_dataframe(coll, key: str, df: pd.DataFrame) -> None:
    tbl = pa.Table.from_pandas(df.reset_index(drop=True), preserve_index=False)
    tbl = tbl.append_column("soma_joinid", pa.array(np.arange(len(df), dtype=np.int64)))
    with coll.add_new_dataframe(key, schema=tbl.schema, index_column_names=["soma_joinid"],
                                domain=[(0, max(len(df) - 1, 0))]) as sdf:
        sdf.write(tbl)


def build_synthetic_census(params: dict, uri: str | Path | None = None, progress: bool | None = None) -> dict:
    """Generate and write the embedded census described by the params' ``synthetic`` section, donor by donor
    (memory flat in cells: sctab.census.streaming); returns its summary.
    `progress`: a bar of cells written (None: on a terminal)."""
    from sctab.census.streaming import write_census_streaming

    cfg = SyntheticCensusConfig.from_params(params)
    return write_census_streaming(cfg, Path(uri or section(params, "census.uri")), progress=progress)
