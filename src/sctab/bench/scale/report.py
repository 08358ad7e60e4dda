"""The scale bench's outputs: the CSV of rows, the figure and the markdown table with the fits.
"""

from __future__ import annotations

import csv
from pathlib import Path

from sctab.bench.scale.dag import basis
from sctab.bench.scale.fit import (
    BASIS_KEY,
    BYTES_PER_CELL_LIMIT,
    MARGINAL_LIMIT,
    NODE_A,
    NODE_B,
    RAM_USABLE,
    RAY_PARALLEL,
    THREADED,
    TIME_SLOPE_LIMIT,
    _linear,
    targets_met,
)
from sctab.bench.scale.sizes import (
    CELLTYPIST_EPOCHS,
    CELLTYPIST_RAM_SHARE,
    PAPER,
    SAMPLED,
    SCTAB_MEMBERS,
    XGBOOST_ROUNDS,
)

# ---------------------------------------------------------------------------------------------- reporting

CSV_FIELDS = ["size", "factor", "n_genes", "stage", "basis", "cells_in", "train_cells", "celltypist_cells", "wall_s",
              "peak_pss_mib", "peak_rss_mib", "peak_single_mib", "peak_procs", "procs_by_marker", "ray_left",
              "out_bytes"]


def write_csv(rows: list[dict], path: Path) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=CSV_FIELDS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({**r, "wall_s": f"{r['wall_s']:.3f}", "peak_rss_mib": f"{r['peak_rss_bytes'] / 2**20:.1f}",
                        "peak_pss_mib": f"{r['peak_pss_bytes'] / 2**20:.1f}",
                        "peak_single_mib": f"{r['peak_single_bytes'] / 2**20:.1f}"})


def plot(rows: list[dict], path: Path, base_genes: int) -> None:
    """Log-log: time and peak memory against cells (each stage's basis), one line per stage; the point at the
    paper's genes as an open marker."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = list(dict.fromkeys(r["stage"] for r in rows))
    cmap = plt.get_cmap("tab20")
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.5))
    for i, st in enumerate(stages):
        key = BASIS_KEY[basis(st)]
        mine = sorted((r for r in rows if r["stage"] == st and r.get(key)), key=lambda r: r[key])
        for ax, val in zip(axes, (lambda r: r["wall_s"], lambda r: r["peak_pss_bytes"] / 2**20)):
            base = [r for r in mine if r["n_genes"] == base_genes]
            ax.plot([r[key] for r in base], [val(r) for r in base], "o-", color=cmap(i % 20), label=st, ms=4)
            other = [r for r in mine if r["n_genes"] != base_genes]
            ax.plot([r[key] for r in other], [val(r) for r in other], "o", mfc="none", color=cmap(i % 20), ms=7)
    for ax, ylabel in zip(axes, ("wall time (s)", "peak memory of the process tree, summed PSS (MiB)")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("cells (cells in; training cells for training-split stages; CellTypist: its sample)")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_title(f"time vs cells ({base_genes:,} genes; open: paper's genes)")
    axes[1].set_title("peak memory vs cells")
    axes[1].legend(fontsize=7, ncol=2, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _hms(s: float) -> str:
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"


def _gib(b: float) -> str:
    return f"{b / 2**30:,.1f} GiB" if b >= 2**30 else f"{b / 2**20:,.0f} MiB"


def markdown(rows: list[dict], fitted: list[dict], header: dict, nodes: dict[str, float]) -> str:
    sizes = list(dict.fromkeys(r["size"] for r in rows))
    stages = list(dict.fromkeys(r["stage"] for r in rows))
    by = {(r["size"], r["stage"]): r for r in rows}
    first = {s: next(r for r in rows if r["size"] == s) for s in sizes}
    lines = [f"## Scale curve, {header['started']}{' (quick)' if header['quick'] else ''}", "",
             f"{header['run']}; every row from this invocation.", "",
             f"Machine: {header['machine']}. {header['load'].capitalize()}.", "",
             f"Census: the embedded synthetic census of profile `{header['profile']}`, its cells per donor times "
             f"each x-size's factor, or sized to a c-size's cells by the profile's rule (`sctab params --cells`); "
             f"training: one epoch per neural model, scTab {SCTAB_MEMBERS} ensemble member "
             f"(the paper's 5 train one after the other: 5x its time), XGBoost "
             f"{XGBOOST_ROUNDS} rounds without early stopping, CellTypist {CELLTYPIST_EPOCHS} epoch; augment "
             f"samples every training cell, CellTypist every one its memory budget allows "
             f"(models.celltypist.max_memory_gib: {CELLTYPIST_RAM_SHARE:.0%} of this machine's RAM or the profile's "
             f"cap, the smaller). Overrides: {header['overrides'] or 'none'}.", "",
             "Memory: the peak over samples every "
             f"{header['interval']:g} s of the summed RSS of the stage's process tree (the shell DVC's command "
             "runs in, the stage process and all its descendants, which include the Ray daemons and workers a "
             "training stage starts, plus any process whose command line names the workspace's own Ray temp dir), "
             "and never below the kernel's high-water mark of the largest single process. Each process counts its "
             "proportional set size (PSS: a page shared by n processes counts 1/n in each), so the sum is what the "
             "tree holds; the fits use it. In brackets, the summed RSS, which counts shared pages (Ray's libraries, "
             "its object store) once per process: an upper bound.", "",
             "### Sizes", "",
             "| Size | Genes | Cells in | Training cells |", "|---|---|---|---|"]
    for s in sizes:
        r = first[s]
        lines.append(f"| {s} | {r['n_genes']:,} | {r['cells_in'] or 0:,} | {r['train_cells'] or 0:,} |")
    lines += ["", "### Wall time (s) and peak memory (MiB) per stage", "",
              "| Stage | " + " | ".join(sizes) + " |", "|---|" + "---|" * len(sizes)]
    for st in stages:
        cells = []
        for s in sizes:
            r = by.get((s, st))
            cells.append("-" if r is None else f"{r['wall_s']:,.1f} s, {r['peak_pss_bytes'] / 2**20:,.0f} MiB "
                         f"({r['peak_rss_bytes'] / 2**20:,.0f})")
        lines.append(f"| {st} | " + " | ".join(cells) + " |")
    lines.append("| **total** | " + " | ".join(
        f"{sum(r['wall_s'] for r in rows if r['size'] == s) / 60:,.1f} min" for s in sizes) + " |")
    if fitted:
        ram = min(nodes.values()) if nodes else None
        lines += ["", "### Growth with cells and the paper's census", "",
                  f"Fits over the sizes at {header['base_genes']:,} genes, against each stage's basis (`in`: cells "
                  f"in; `train`: training cells; `sample`: the cells CellTypist trained on, fewer than the "
                  f"training cells where its memory budget binds). Flags: memory growing by more than "
                  f"{BYTES_PER_CELL_LIMIT:.0f} bytes per cell (a cell's metadata), time with a log-log slope above "
                  f"{TIME_SLOPE_LIMIT} "
                  f"over all sizes, or a marginal exponent above {MARGINAL_LIMIT} (the fixed cost removed; "
                  "docs/bench.md). "
                  "Paper's census: "
                  f"{PAPER['cells_in'] / 1e6:.1f} M cells in, {PAPER['train_cells'] / 1e6:.1f} M training cells, "
                  f"{PAPER['n_genes']:,} genes; sampled stages at the paper's sample "
                  f"({', '.join(f'{k} {v[1]:,}' for k, v in SAMPLED.items())}). Projection at the profile's genes: "
                  "the larger of the straight line and the power law through the largest size; then the per-cell "
                  "part times the gene ratio (see docs/bench.md). Times are on this machine's cores and are per "
                  "epoch / per the stated budget for the training stages.", "",
                  "| Stage | Basis | Time slope / marginal exponent | Memory slope | Memory growth | Flags | Cells at "
                  "paper scale | Gene ratio time / memory | Time at paper scale | Peak memory at paper scale | "
                  f"Fits a {_gib(ram) if ram else '?'} node | Memory flat / time linear |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for f in fitted:
            fits_node = "-" if ram is None else ("yes" if f["mem_full"] <= ram else "**no**")
            mem_ok, time_ok = targets_met(f)
            met = (f"{'yes' if mem_ok else '**no**'}{' (Ray: per worker)' if f['stage'] in RAY_PARALLEL else ''} / "
                   f"{'yes' if time_ok else '**no**'}")
            lines.append(
                f"| {f['stage']} | {f['basis']} | {f['time_slope']:.2f} / {f['time_marginal_exp']:.2f} | "
                f"{f['mem_slope']:.2f} | {f['bytes_per_cell']:,.0f} B/cell | "
                f"{'**' + '; '.join(f['flags']) + '**' if f['flags'] else '-'} | {f['target_cells'] / 1e6:.1f} M | "
                f"{f['time_gene_ratio']:.1f} / {f['mem_gene_ratio']:.1f} | {_hms(f['time_full'])} | "
                f"{_gib(f['mem_full'])} | {fits_node} | {met} |")
        if nodes:
            lines += ["", "Nodes of infra/ray/cluster.yaml: " + "; ".join(f"{k}: {_gib(v)} RAM"
                                                                       for k, v in nodes.items()) + "."]
    deps = header.get("deployments") or []
    if deps:
        rates = header.get("gpu_rates")
        lines += ["", "### The paper's census on two deployments", "",
                  f"{NODE_A['label']}; {NODE_B['label']}. A stage fits when its peak (per worker for the Ray "
                  f"stages on (b)) stays under {RAM_USABLE:.0%} of a node's RAM. Times as budgeted here (one epoch, "
                  f"one scTab member). On (a) the neural stages use the training-step and inference rates measured "
                  + (f"on an {rates['device']} ({rates['train']:,.0f} and {rates['infer']:,.0f} cells/s, "
                     f"`{rates['source']}`), not measured in this run; " if rates else "on a GPU: none found; ")
                  + f"the threaded stages ({', '.join(sorted(THREADED))}) assume linear scaling over cores, a best "
                  "case; the other stages run as one process and keep this machine's time. On (b) a Ray stage "
                  "takes as many workers as its memory needs. CellTypist sizes its sample to a node's memory "
                  "(models.celltypist.max_memory_gib): the paper's 1.5 M cells where they fit, fewer where not, "
                  "as stated.", "",
                  "| Stage | (a) time | (a) how | (a) peak | (a) fits | (b) workers / sample | (b) time "
                  "| (b) peak per worker | (b) fits |", "|---|---|---|---|---|---|---|---|---|"]
        for d in deps:
            lines.append(f"| {d['stage']} | {_hms(d['time_a'])} | {d['how_a']} | {_gib(d['mem_a'])} | "
                         f"{'yes' if d['fits_a'] else '**no**'} | {d.get('how_b') or d['workers_b'] or '-'} | "
                         f"{_hms(d['time_b'])} | "
                         f"{_gib(d['mem_b'])} | {'yes' if d['fits_b'] else '**no**'} |")
        lines.append(f"| **DAG** | {_hms(sum(d['time_a'] for d in deps))} | | "
                     f"{_gib(max(d['mem_a'] for d in deps))} | {'yes' if all(d['fits_a'] for d in deps) else '**no**'}"
                     f" | | {_hms(sum(d['time_b'] for d in deps))} | {_gib(max(d['mem_b'] for d in deps))} | "
                     f"{'yes' if all(d['fits_b'] for d in deps) else '**no**'} |")
    big = [r for r in rows if r["size"] == sizes[-1] and r.get("out_bytes")]
    if big:
        lines += ["", f"### Outputs on disk at {sizes[-1]}", "",
                  "Bytes per cell in: the slope of a straight line through each output's size over the sizes (a fixed "
                  "part, such as the ontology, does not count per cell); the size itself divided by the cells with "
                  "one size only. The DVC cache keeps one more copy of each output unless it links.", "",
                  "| Stage | Output | Bytes | Bytes per cell in | At 22.2 M cells |", "|---|---|---|---|---|"]
        tot_fixed = tot_per = 0.0
        for r in big:
            for o, b in (r.get("outs") or {}).items():
                pts = [(q["cells_in"], q["outs"][o]) for q in rows
                       if q["stage"] == r["stage"] and q.get("cells_in") and o in (q.get("outs") or {})]
                fixed, per = _linear(*zip(*pts)) if len(pts) > 1 else (0.0, b / max(r.get("cells_in") or 1, 1))
                per = max(per, 0.0)
                fixed = b - per * (r.get("cells_in") or 0)
                tot_fixed, tot_per = tot_fixed + fixed, tot_per + per
                lines.append(f"| {r['stage']} | `{o}` | {_gib(b)} | {per:,.0f} | "
                             f"{_gib(fixed + per * PAPER['cells_in'])} |")
        lines.append(f"| **all** | | {_gib(sum(r['out_bytes'] for r in big))} | {tot_per:,.0f} | "
                     f"{_gib(tot_fixed + tot_per * PAPER['cells_in'])} |")
    return "\n".join(lines) + "\n"
