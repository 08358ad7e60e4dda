"""Where the sparse first layer stops paying: both CSR inference paths timed over a range of densities.

In eval on the CPU a CSR batch takes one of two paths (``TabNetEncoder.csr_densify_above``): written into a
dense batch and multiplied by a dense GEMM, or multiplied sparsely (one weight row gathered per non-zero). Which
is faster depends on the batch's density and on the machine. This bench times the whole forward pass both ways
on batches of the bench store thinned (or filled) to each density, on the trained bench weights, interleaving
the two paths so that machine load hits both alike, and reports the density where they cross. Each path must
pass the bench's exactness check at each density, or the timing compares different work.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from sctab.bench.checks import check_text, passed

DENSITIES = (0.01, 0.02, 0.03, 0.05, 0.075, 0.10, 0.15, 0.20)


def at_density(x: torch.Tensor, density: float, seed: int = 0) -> torch.Tensor:
    """A CSR batch of ``x``'s shape with about ``density`` non-zeros: ``x``'s own entries thinned at random, or
    topped up with entries copied from other cells' values at random genes when ``x`` is sparser."""
    rng = np.random.default_rng(seed)
    crow, col, val = x.crow_indices().numpy(), x.col_indices().numpy(), x.values().numpy()
    n, g = x.shape
    rows = np.repeat(np.arange(n), np.diff(crow))
    have = len(val) / (n * g)
    if density <= have:
        keep = rng.random(len(val)) < density / have
        rows, col, val = rows[keep], col[keep], val[keep]
    else:
        extra = int((density - have) * n * g)
        r, c = rng.integers(0, n, extra), rng.integers(0, g, extra)
        rows, col = np.concatenate([rows, r]), np.concatenate([col, c])
        val = np.concatenate([val, rng.choice(val, extra)])
        key = np.unique(rows.astype(np.int64) * g + col, return_index=True)[1]  # one entry per (cell, gene)
        rows, col, val = rows[key], col[key], val[key]
    order = np.lexsort((col, rows))
    rows, col, val = rows[order], col[order], val[order]
    crow = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=n), out=crow[1:])
    return torch.sparse_csr_tensor(torch.from_numpy(crow), torch.from_numpy(col.astype(np.int64)),
                                   torch.from_numpy(val.astype(np.float32)), size=(n, g))


def _paths():
    return (("dense", -1.0), ("sparse", 2.0))  # thresholds that force each path


def time_paths(model, x: torch.Tensor, repeats: int) -> dict:
    """Seconds per forward pass on ``x`` for both paths (medians, the paths interleaved), and each path's
    exactness check (sctab.bench.exactness.exactness: on one thread, against the reference float32 model and a
    float64 copy, the bound every model row of the bench uses)."""
    from sctab.bench.exactness import exactness, one_thread
    from sctab.models.reference_tabnet import ReferenceTabNet

    enc = model.encoder
    saved = enc.csr_densify_above
    times = {"dense": [], "sparse": []}
    checks = {}
    try:
        with torch.no_grad():
            with one_thread():
                dense = x.to_dense()
                reference = ReferenceTabNet.like(model)
                ref = [torch.softmax(reference(dense)[0], -1)]
                p64 = [torch.softmax(reference.double()(dense.double())[0], -1)]
                del reference, dense
                for path, above in _paths():
                    enc.csr_densify_above = above
                    checks[path] = exactness([torch.softmax(model(x)[0], -1)], ref, p64)["check"]
            for path, above in _paths():  # warm-up on all threads (entmax's k adapts)
                enc.csr_densify_above = above
                model(x)
            for _ in range(repeats):
                for path, above in _paths():
                    enc.csr_densify_above = above
                    t = time.perf_counter()
                    model(x)
                    times[path].append(time.perf_counter() - t)
    finally:
        enc.csr_densify_above = saved
    return {"dense_s": statistics.median(times["dense"]), "sparse_s": statistics.median(times["sparse"]),
            "checks": checks, "agree": all(passed(c) for c in checks.values())}


def crossover(rows: list[dict]) -> float | None:
    """The density where sparse stops being faster (linear interpolation of the time ratio between the two
    measured densities that bracket 1); None when one path wins everywhere in the range."""
    ratio = [(r["density"], r["sparse_s"] / r["dense_s"]) for r in sorted(rows, key=lambda r: r["density"])]
    for (d0, q0), (d1, q1) in zip(ratio, ratio[1:]):
        if q0 <= 1 < q1:
            return d0 + (1 - q0) * (d1 - d0) / (q1 - q0)
    return None


def measure(cfg, densities=DENSITIES, repeats: int = 5) -> dict:
    from sctab.bench.fixtures import model_and_batches

    torch.set_num_threads(max(1, torch.get_num_threads()))
    model, batches = model_and_batches(cfg, 1)
    model.eval()
    x = batches[0].x
    rows = []
    for d in densities:
        xd = at_density(x, d)
        r = time_paths(model, xd, repeats)
        r.update(density=d, actual_density=xd.values().numel() / (xd.shape[0] * xd.shape[1]))
        rows.append(r)
        print(f"  {d:6.1%}: dense {r['dense_s'] * 1e3:7.1f} ms, sparse {r['sparse_s'] * 1e3:7.1f} ms", file=sys.stderr,
              flush=True)
    return {"rows": rows, "crossover": crossover(rows), "batch": int(x.shape[0]), "genes": int(x.shape[1]),
            "store_density": x.values().numel() / (x.shape[0] * x.shape[1]), "repeats": repeats,
            "default_threshold": model.encoder.csr_densify_above}


def _cell(check: dict) -> str:
    return check_text(check).replace("|", "\\|")


def table(res: dict, header: str) -> str:
    lines = [header, "", "| Density | Densify + dense GEMM (ms) | Sparse first layer (ms) | sparse / dense | "
             "Exactness, densified | Exactness, sparse |", "|---|---|---|---|---|---|"]
    for r in res["rows"]:
        lines.append(f"| {r['actual_density']:.2%} | {r['dense_s'] * 1e3:,.1f} | {r['sparse_s'] * 1e3:,.1f} | "
                     f"{r['sparse_s'] / r['dense_s']:.2f} | {_cell(r['checks']['dense'])} | "
                     f"{_cell(r['checks']['sparse'])} |")
    c = res["crossover"]
    lines += ["", (f"Crossover: **{c:.1%} non-zero** (sparse faster below). " if c is not None else
                   "No crossover in the range measured. ")
              + f"The encoder's threshold (`csr_densify_above`) is {res['default_threshold']:.1%}; the bench store is "
              f"{res['store_density']:.1%} non-zero."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:

    from sctab.bench.fixtures import Config
    from sctab.bench.runner import REPO
    from sctab.provenance import RunRecord, machine_text

    p = argparse.ArgumentParser(prog="benchmarks/csr_crossover.py", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny shapes (2,000 genes): a smoke run")
    p.add_argument("--repeats", type=int, default=5, help="timed passes per path and density (default %(default)s)")
    p.add_argument("--cache", default=str(REPO / "benchmarks" / ".cache"), help="bench store and weights cache")
    p.add_argument("--out", default=None, help="results .md (default benchmarks/results/csr-crossover-<date>.md; "
                   "'-' = do not write; quick runs write nothing unless given)")
    a = p.parse_args(argv)
    cfg = Config.quick(a.cache) if a.quick else Config(cache=a.cache)
    run = RunRecord.start("benchmarks/csr_crossover.py", argv, root=REPO)
    res = measure(cfg, repeats=a.repeats)
    header = (f"## CSR inference: densify or sparse first layer, {run.started:%Y-%m-%d %H:%M}\n\n"
              f"{run.command_text()}. Machine: {machine_text()}; {run.load_summary()}. Whole forward pass of the "
              f"trained bench model on one batch of {res['batch']:,} cells x {res['genes']:,} genes, thinned or "
              f"topped up to each density; medians of {res['repeats']} passes per path, the paths interleaved.")
    text = table(res, header)
    print(text)
    dated = REPO / "benchmarks" / "results" / f"csr-crossover-{run.started:%Y-%m-%d-%H%M}.md"
    out = a.out if a.out is not None else (None if a.quick else str(dated))
    if out and out != "-":
        Path(out).write_text(text + "\n")
        Path(out).with_suffix(".json").write_text(json.dumps({**run.as_dict(), **res}, indent=1))
        print(f"wrote {out}", file=sys.stderr)
    return 0 if all(r["agree"] for r in res["rows"]) else 1
