"""`benchmarks/exact_bound.py`: is the exactness bound of the model rows stable from run to run?

The model rows' bound is EXACT_FACTOR x the reference model's float32 error against float64 (exactness.exactness).
Evaluated on all threads, that error moved from run to run on the same weights and batches (5.7e-8 in some
bench runs, 8.0e-6 in others, results of 2026-11-25/26): how many threads a kernel got, which the machine's
load decides, sets the summation order. The rows now evaluate the check on one thread (exactness.one_thread). This
runs both, on the bench's weights and the inference rows' batches, in several fresh processes (a process is
what a bench row is), and writes each process's errors and the bound, with the command and commit.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from sctab.allocator import keep_freed_memory
from sctab.bench.exactness import EXACT_FACTOR, one_thread, tie_bound
from sctab.bench.fixtures import Config, model_and_batches
from sctab.bench.runner import REPO
from sctab.models.reference_tabnet import ReferenceTabNet
from sctab.provenance import RunRecord, allocator_text, machine_text


def _child(cfg: Config, f64_path: Path, out: Path) -> None:
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    keep_freed_memory()  # as every bench part runs (sctab.bench.runner._child); SCTAB_MALLOC=system: glibc's
    model, batches = model_and_batches(cfg, cfg.model_batches)
    model.eval()
    dense = [b.x.to_dense() for b in batches]
    with torch.no_grad():
        if not f64_path.exists():  # the float64 reference: the same in every process, computed once
            m64 = ReferenceTabNet.like(model).double()
            torch.save([torch.softmax(m64(x.double())[0], -1) for x in dense], f64_path)
            del m64
        p64 = torch.cat(torch.load(f64_path, weights_only=True))

        reference = ReferenceTabNet.like(model)

        def err(fast: bool, csr: bool = False) -> float:
            net = model if fast else reference
            p = [torch.softmax(net(b.x if csr else x)[0], -1) for b, x in zip(batches, dense)]
            return float((torch.cat(p).double() - p64).abs().max())

        res = {"reference, all threads": err(False)}
        with one_thread():
            res["reference, one thread"] = err(False)
            res["bound"] = tie_bound(res["reference, one thread"])
            res["ours (CSR), one thread"] = err(True, csr=True)
    out.write_text(json.dumps(res))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="benchmarks/exact_bound.py", description=__doc__.splitlines()[0])
    p.add_argument("--processes", type=int, default=4, help="fresh processes (default %(default)s)")
    p.add_argument("--quick", action="store_true", help="the quick bench's shapes")
    p.add_argument("--cache", default=str(REPO / "benchmarks" / ".cache"))
    p.add_argument("--out", default=None,
                   help="markdown file (default benchmarks/results/exact-bound-<date>-<time>.md; "
                   "'-' = print only)")
    p.add_argument("--_child", nargs=2, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    cfg = Config.quick(a.cache) if a.quick else Config(cache=a.cache)
    if a._child:
        _child(cfg, Path(a._child[0]), Path(a._child[1]))
        return 0
    run, rows = RunRecord.start("benchmarks/exact_bound.py", argv, root=REPO), []
    with tempfile.TemporaryDirectory() as d:
        for i in range(a.processes):
            out = Path(d) / f"{i}.json"
            cmd = [sys.executable, "-m", "sctab.bench.bound", "--cache", a.cache, "--_child", str(Path(d) / "f64.pt"),
                   str(out), *(["--quick"] if a.quick else [])]
            r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO,
                               env={**os.environ, "PYTHONPATH": str(REPO / "src")})
            if r.returncode != 0:
                raise SystemExit(f"exact_bound: process {i} failed: {(r.stderr or r.stdout).strip()[-500:]}")
            rows.append(json.loads(out.read_text()))
            print(f"process {i}: {rows[-1]}", file=sys.stderr, flush=True)
    bounds = [r["bound"] for r in rows]
    lines = [f"## Exactness bound, {run.started:%Y-%m-%d %H:%M}{' (quick)' if a.quick else ''}", "",
             f"{run.command_text()}; {a.processes} fresh processes. Machine: {machine_text()}. "
             f"{run.load_summary().capitalize()}. Allocator: {allocator_text()}.", "",
             f"The bench's weights and the inference rows' {cfg.model_batches} batches of {cfg.batch_size} cells "
             f"({cfg.n_genes:,} genes); largest |p_f32 - p_f64| of the reference model on all threads (what the "
             f"rows used before) and on one thread (what they use now), the bound ({EXACT_FACTOR:g}x the "
             f"one-thread error) and the fast path's error on one thread (the CSR row's check).", "",
             "| Process | reference, all threads | reference, one thread | bound | ours (CSR), one thread |",
             "|---|---|---|---|---|"]
    for i, r in enumerate(rows):
        lines.append(f"| {i} | {r['reference, all threads']:.2e} | {r['reference, one thread']:.2e} | "
                     f"{r['bound']:.2e} | {r['ours (CSR), one thread']:.2e} |")
    lines += ["", f"Bound over the processes: {min(bounds):.2e} to {max(bounds):.2e} "
                  f"(max / min {max(bounds) / min(bounds):.3g})."]
    text = "\n".join(lines) + "\n"
    print(text)
    dated = REPO / "benchmarks" / "results" / f"exact-bound-{run.started:%Y-%m-%d-%H%M}.md"
    out = a.out if a.out is not None else (None if a.quick else str(dated))
    if out and out != "-":
        Path(out).write_text(text)
        print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
