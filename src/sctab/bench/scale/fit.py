"""How each stage grows with cells: the fit, its flags (too steep, too many bytes per cell), the extrapolation
to the paper's census at 19,331 genes, and the two deployments it is carried to.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import yaml

from sctab.bench.scale.dag import basis
from sctab.bench.scale.sizes import PAPER, REPO, SAMPLED, ScaleError

#: a stage whose peak memory grows by more than this per cell holds more than the cell's metadata (ids, labels,
#: split names and their string copies: ~150-330 B measured in the tables that must exist per cell)
BYTES_PER_CELL_LIMIT = 300.0
#: a stage whose log-log time slope exceeds this grows faster than linearly
TIME_SLOPE_LIMIT = 1.15
#: ... or whose marginal time grows like cells**1.5 or faster (a fixed cost can hide that from the slope), once
#: the last size adds enough seconds to tell from noise
MARGINAL_LIMIT = 1.5
MARGINAL_MIN_S = 5.0
#: RAM of the AWS instance types infra/ray/cluster.yaml may name (GiB, AWS's published sizes)
INSTANCE_RAM_GIB = {"g5.xlarge": 16, "g5.2xlarge": 32, "g5.4xlarge": 64, "g5.8xlarge": 128, "m6i.xlarge": 16,
                    "m6i.2xlarge": 32, "m6i.4xlarge": 64, "m6i.8xlarge": 128, "p3.2xlarge": 61, "g4dn.2xlarge": 32}


# ---------------------------------------------------------------------------------------------- fitting


def _loglog_slope(x, y) -> float:
    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = (x > 0) & (y > 0)
    if ok.sum() < 2 or np.ptp(np.log(x[ok])) == 0:
        return float("nan")
    return float(np.polyfit(np.log(x[ok]), np.log(y[ok]), 1)[0])


def _linear(x, y) -> tuple[float, float]:
    """(intercept, slope) of a least-squares line."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 2 or np.ptp(x) == 0:
        return float(np.mean(y)), 0.0
    b, a = np.polyfit(x, y, 1)
    return float(a), float(b)


def marginal_exponent(x, y) -> float:
    """k in ``y = a + c * x**k`` from the first and last secants (consecutive sizes): the fixed part cancels, so a
    quadratic stage shows k ~ 2 even where its fixed cost keeps the log-log slope under 1. NaN with fewer than
    three sizes or an increment that is not positive."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 3:
        return float("nan")
    d_lo, d_hi = (y[1] - y[0]) / (x[1] - x[0]), (y[-1] - y[-2]) / (x[-1] - x[-2])
    if d_lo <= 0 or d_hi <= 0:
        return float("nan")
    mid_lo, mid_hi = math.sqrt(x[0] * x[1]), math.sqrt(x[-2] * x[-1])
    return 1.0 + math.log(d_hi / d_lo) / math.log(mid_hi / mid_lo)


def fit_stage(cells, wall_s, peak_bytes) -> dict:
    """How a stage grows with cells: log-log slopes of time and memory, the memory's growth in bytes per cell
    (slope of a straight line through peak RSS against cells), the time's per-cell cost, the exponent of the
    marginal time, and the flags: memory growing beyond a cell's metadata (> BYTES_PER_CELL_LIMIT), time growing
    faster than linearly (log-log slope > TIME_SLOPE_LIMIT, or a marginal exponent > MARGINAL_LIMIT where the
    last increment is at least MARGINAL_MIN_S: large enough to be more than timing noise)."""
    order = np.argsort(np.asarray(cells, float))
    x = np.asarray(cells, float)[order]
    t = np.asarray(wall_s, float)[order]
    m = np.asarray(peak_bytes, float)[order]
    t_a, t_b = _linear(x, t)
    m_a, m_b = _linear(x, m)
    fit = {"n_points": int(len(x)), "time_slope": _loglog_slope(x, t), "mem_slope": _loglog_slope(x, m),
           "time_marginal_exp": marginal_exponent(x, t),
           "time_intercept_s": t_a, "time_per_cell_s": t_b, "mem_intercept_bytes": m_a, "bytes_per_cell": m_b,
           "max_cells": float(x[-1]) if len(x) else float("nan"), "time_at_max": float(t[-1]) if len(x) else 0.0,
           "mem_at_max": float(m[-1]) if len(x) else 0.0}
    flags = []
    if m_b > BYTES_PER_CELL_LIMIT:
        flags.append(f"memory +{m_b:,.0f} B/cell")
    if fit["time_slope"] > TIME_SLOPE_LIMIT:
        flags.append(f"time superlinear (slope {fit['time_slope']:.2f})")
    elif fit["time_marginal_exp"] > MARGINAL_LIMIT and t[-1] - t[-2] >= MARGINAL_MIN_S:
        flags.append(f"time superlinear (marginal exponent {fit['time_marginal_exp']:.2f})")
    fit["flags"] = flags
    return fit


def targets_met(fit: dict) -> tuple[bool, bool]:
    """(memory, time) targets of the scale run: peak memory flat in cells (at most BYTES_PER_CELL_LIMIT per cell,
    or, for a stage that runs data-parallel on Ray, bounded per worker: checked on deployment (b)), and time
    linear (marginal exponent at most TIME_SLOPE_LIMIT; a stage whose time does not grow at all meets it)."""
    mem_ok = fit["bytes_per_cell"] <= BYTES_PER_CELL_LIMIT or fit["stage"] in RAY_PARALLEL
    k = fit["time_marginal_exp"]
    time_ok = (k <= TIME_SLOPE_LIMIT) if not math.isnan(k) else fit["time_slope"] <= TIME_SLOPE_LIMIT
    return bool(mem_ok), bool(time_ok)


def gene_ratio(at_genes: float, cells: float, intercept: float, per_cell: float) -> tuple[float, float, str]:
    """How much more a stage's per-cell part costs at the paper's genes: (ratio, intercept kept, method).

    With a measurement ``at_genes`` at ``cells`` cells and the profile-gene fit ``intercept + per_cell *
    cells``: when the per-cell part is at least a tenth of the fit there, the ratio of per-cell parts (the
    fixed part is taken as gene-independent); otherwise the ratio of the totals (the whole cost scales).
    Never below 1: more genes are never cheaper, a ratio under 1 is noise."""
    base_total = intercept + per_cell * cells
    part = per_cell * cells
    if base_total > 0 and part >= 0.1 * base_total and intercept >= 0:
        return max(1.0, (at_genes - intercept) / part), intercept, "per-cell part"
    if base_total > 0:
        return max(1.0, at_genes / base_total), 0.0, "whole stage"
    return 1.0, 0.0, "none (no fit)"


def project(fit: dict, cells: float, key: str) -> float:
    """A fitted quantity (``time`` or ``mem``) at ``cells``, at the profile's genes: the larger of the straight
    line and the power law through the largest measured size (a sublinear log-log slope from fixed costs would
    underestimate, a straight line would miss superlinear growth)."""
    a, b = (fit["time_intercept_s"], fit["time_per_cell_s"]) if key == "time" else \
        (fit["mem_intercept_bytes"], fit["bytes_per_cell"])
    slope = fit[f"{key}_slope"]
    at_max = fit[f"{key}_at_max"]
    power = at_max * (cells / fit["max_cells"]) ** slope if not math.isnan(slope) and fit["max_cells"] > 0 else 0.0
    return max(a + b * cells, power, 0.0)


def target_cells(stage: str) -> float:
    """The paper-scale cell count a stage is carried to: cells in, training cells or the paper's sample."""
    if stage in SAMPLED:
        return float(min(SAMPLED[stage][1], PAPER["train_cells"]))
    return float(PAPER["train_cells"] if basis(stage) == "train" else PAPER["cells_in"])


def extrapolate(fit: dict, stage: str, genes_point: dict | None) -> dict:
    """The stage at the paper's census: time and peak memory at its target cells, scaled to the paper's genes
    by the ``genes_point`` (``{"cells", "wall_s", "peak_bytes"}`` measured at the paper's genes) when there."""
    n = target_cells(stage)
    out = {"target_cells": n}
    for key, meas, a_key, b_key in (("time", "wall_s", "time_intercept_s", "time_per_cell_s"),
                                    ("mem", "peak_bytes", "mem_intercept_bytes", "bytes_per_cell")):
        base = project(fit, n, key)
        if genes_point:
            r, kept, how = gene_ratio(genes_point[meas], genes_point["cells"], fit[a_key], fit[b_key])
        else:
            r, kept, how = 1.0, 0.0, "none (no point at the paper's genes)"
        kept = min(kept, base)
        out[f"{key}_gene_ratio"] = r
        out[f"{key}_gene_method"] = how
        out[f"{key}_full"] = kept + r * (base - kept)
    return out


def node_ram(cluster_yaml: Path) -> dict[str, float]:
    """RAM in bytes of each node type of a Ray cluster file (from its AWS instance type)."""
    spec = yaml.safe_load(Path(cluster_yaml).read_text())
    out = {}
    for name, node in (spec.get("available_node_types") or {}).items():
        itype = (node.get("node_config") or {}).get("InstanceType")
        if itype not in INSTANCE_RAM_GIB:
            raise ScaleError(f"{cluster_yaml}: node type {name} uses instance {itype!r}, whose RAM the scale bench "
                             f"does not know; add it to INSTANCE_RAM_GIB in {Path(__file__).name}")
        out[f"{name} ({itype})"] = INSTANCE_RAM_GIB[itype] * 2**30
    return out


#: the row field each basis reads
BASIS_KEY = {"train": "train_cells", "sample": "celltypist_cells", "in": "cells_in"}


def fits(rows: list[dict], base_genes: int) -> list[dict]:
    """Per stage: the fit over the sizes at ``base_genes`` and the extrapolation to the paper's census."""
    out = []
    for stage in dict.fromkeys(r["stage"] for r in rows):
        mine = [r for r in rows if r["stage"] == stage]
        key = BASIS_KEY[basis(stage)]
        base = [r for r in mine if r["n_genes"] == base_genes and r.get(key)]
        if len(base) < 2:
            continue
        f = fit_stage([r[key] for r in base], [r["wall_s"] for r in base], [r["peak_pss_bytes"] for r in base])
        g = [r for r in mine if r["n_genes"] == PAPER["n_genes"] and r.get(key)]
        point = {"cells": g[0][key], "wall_s": g[0]["wall_s"], "peak_bytes": g[0]["peak_pss_bytes"]} if g else None
        ex = extrapolate(f, stage, None if base_genes == PAPER["n_genes"] else point)
        if base_genes == PAPER["n_genes"]:
            ex["time_gene_method"] = ex["mem_gene_method"] = "measured at the paper's genes"
        out.append({"stage": stage, "basis": basis(stage), **f, **ex})
    return out


# ---------------------------------------------------------------------------------------------- two deployments

#: (a) one node with 16 cores, 128 GiB and one H100
NODE_A = {"label": "(a) one node: 16 cores, 128 GiB, one H100", "cores": 16, "ram_bytes": 128 * 2**30}
#: (b) a Ray cluster of 32 GiB nodes with 8 vCPUs each (the instances of infra/ray/cluster.yaml)
NODE_B = {"label": "(b) Ray cluster of 32 GiB nodes, 8 vCPUs each", "cores": 8, "ram_bytes": 32 * 2**30}
#: share of a node's RAM a stage may plan to use (the OS, Ray's object store and page cache need the rest)
RAM_USABLE = 0.8
#: stages whose work a threaded library spreads over the node's cores (BLAS; XGBoost's and CellTypist's
#: threads): their time is divided by the ratio of cores, the best case of linear scaling, stated as such
THREADED = {"pca", "train_xgboost", "train_celltypist"}
#: stages that run data-parallel on Ray workers: on (b) the per-cell part of their memory splits over workers
RAY_PARALLEL = {"train_linear", "train_mlp", "train_sctab", "train_xgboost"}
#: neural training stages: on (a) they run on the GPU at the rates the GPU bench measured on an H100
NEURAL = {"train_linear", "train_mlp", "train_sctab"}
#: the GPU bench's rows on a lent H100 (docs/gpu.md): scTab training step (float32) and inference per model
GPU_ROWS = REPO / "benchmarks" / "results" / "gpu-2026-11-26" / "gpu-bench-rows.json"


def gpu_rates(path: Path = GPU_ROWS) -> dict | None:
    """The H100's measured medians (cells/s) of the scTab training step and inference, or None without the file."""
    if not Path(path).exists():
        return None
    rows = {r["name"]: r for r in json.loads(Path(path).read_text())["rows"]}
    try:
        return {"train": float(rows["device_train_step"]["median"]), "infer": float(rows["device_inference"]["median"]),
                "source": str(Path(path).relative_to(REPO)) if Path(path).is_relative_to(REPO) else str(path),
                "device": rows["device_train_step"]["ours"]["label"].rsplit(" on ", 1)[-1]}
    except KeyError as e:
        raise ScaleError(f"{path} lacks the GPU row or field {e}") from None


def deployments(fitted: list[dict], local_cores: int, rates: dict | None) -> list[dict]:
    """Each fitted stage at the paper's census on (a) one 16-core, 128 GiB node with an H100 and (b) a Ray cluster
    of 32 GiB nodes: time, peak memory (per worker for the Ray stages on (b)), workers and whether it fits.

    Time on (a): the neural stages at the H100's measured training-step rate over the training cells plus its
    inference rate over the validation cells (a sixth of the cells in: the 15 % split), plus the fit's fixed
    cost; the threaded stages (THREADED) at this machine's time times local cores / 16; the rest as measured
    here (one process: no speed-up is claimed). Memory on (a): the projected peak. On (b): a Ray stage takes as
    many workers as its per-cell memory needs to stay under RAM_USABLE of a node (the fixed part on every
    worker), its time divided by workers x 8 cores over the local cores; any other stage must fit one node."""
    out = []
    for f in fitted:
        st = f["stage"]
        fixed = max(f["mem_intercept_bytes"], 0.0)
        mem = f["mem_full"]
        t = f["time_full"]
        if st == "train_celltypist":  # the stage sizes its sample to the node's memory (max_memory_gib)
            out.append(_celltypist_on_nodes(f, local_cores))
            continue
        # (a)
        if st in NEURAL and rates:
            n = f["target_cells"]
            val = PAPER["cells_in"] * 0.15
            ta, how_a = max(f["time_intercept_s"], 0.0) + n / rates["train"] + val / rates["infer"], "H100 rates"
        elif st in THREADED:
            ta, how_a = t * local_cores / NODE_A["cores"], f"x {local_cores}/{NODE_A['cores']} cores"
        else:
            ta, how_a = t, "as measured (one process)"
        fits_a = mem <= NODE_A["ram_bytes"] * RAM_USABLE
        # (b)
        room = NODE_B["ram_bytes"] * RAM_USABLE
        if st in RAY_PARALLEL:
            per_cell = max(mem - fixed, 0.0)
            workers = 1 if fixed + per_cell <= room else (math.ceil(per_cell / (room - fixed)) if room > fixed
                                                           else None)
            mem_b = fixed + per_cell / workers if workers else mem
            tb = t * local_cores / (NODE_B["cores"] * (workers or 1))
        else:
            workers, mem_b = None, mem
            tb = t * local_cores / NODE_B["cores"] if st in THREADED else t
        fits_b = mem_b <= room and (st not in RAY_PARALLEL or workers is not None)
        out.append({"stage": st, "time_a": ta, "how_a": how_a, "mem_a": mem, "fits_a": fits_a, "time_b": tb,
                    "workers_b": workers, "mem_b": mem_b, "fits_b": fits_b})
    return out


def _celltypist_on_nodes(f: dict, local_cores: int) -> dict:
    """CellTypist on (a) and (b): its sample is the paper's 1.5 M cells or what RAM_USABLE of the node fits by the
    fitted memory line (the stage's max_memory_gib does this sizing), its time the fitted line at that sample."""
    res = {"stage": f["stage"]}
    for tag, node in (("a", NODE_A), ("b", NODE_B)):
        room = node["ram_bytes"] * RAM_USABLE
        per = max(f["bytes_per_cell"] * f.get("mem_gene_ratio", 1.0), 1e-9)
        fixed = max(f["mem_intercept_bytes"], 0.0)
        cells = float(min(f["target_cells"], max((room - fixed) / per, 0.0)))
        t = max(f["time_intercept_s"], 0.0) + f["time_per_cell_s"] * f.get("time_gene_ratio", 1.0) * cells
        res.update({f"time_{tag}": t * local_cores / node["cores"], f"mem_{tag}": fixed + per * cells,
                    f"fits_{tag}": cells > 0, f"sample_{tag}": cells})
    res.update({"how_a": f"sample {res['sample_a'] / 1e6:.2f} M cells, x {local_cores}/{NODE_A['cores']} cores",
                "workers_b": None, "how_b": f"sample {res['sample_b'] / 1e6:.2f} M cells"})
    return res
