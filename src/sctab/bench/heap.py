"""How much memory a process that evaluates keeps, pass after pass: live data against freed memory glibc holds.

Why: in the scale curve the training stages' memory rose with the number of cells at small sizes. Their
validation pass is what rises: each batch's cells x genes buffers are freed and kept in the heap
(:mod:`sctab.allocator`), and the holes they leave grow until the heap reaches a steady state. A size with
few validation batches has not reached it; one with more has. This bench runs repeated evaluation passes of
one model over one split and reports, after each pass, the RSS and glibc's own account of its heaps (held,
free inside them, in use), then the RSS once the free memory is given back (``malloc_trim``): what is live.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import psutil
import torch

from sctab.allocator import heap_stats, keep_freed_memory, mode, release_freed_memory
from sctab.bench.runner import REPO
from sctab.provenance import RunRecord, machine_text

#: `--help`'s description
DESCRIPTION = ("Repeated evaluation passes of one model over one split: after each pass the RSS and "
               "glibc's heaps (held, free inside them, in use), then the RSS once the free memory is returned. Shows "
               "whether a process's memory grows with the cells it evaluates or reaches a steady state.")

MIB = 2**20


def bench_model(args) -> tuple[torch.nn.Module, object, str]:
    """The network to evaluate, its store and a description: a model folder, or the bench's trained
    19,331-gene TabNet and store (``make bench``'s cache)."""
    from sctab.data.store import Store

    if args.model:
        from sctab.models import folder

        clf = folder.load(args.model)
        member = clf.members[0]
        if not hasattr(member, "module"):
            raise SystemExit(f"{args.model}: a {member.kind} model; the evaluation pass runs the neural models "
                             f"(sctab, mlp, linear)")
        return member.module.eval(), Store(args.store), f"model folder {args.model} ({member.kind})"
    from sctab.bench.fixtures import Config, trained_states
    from sctab.bench.synthetic import make_store
    from sctab.models import TabNet

    cfg = Config(cache=args.cache)
    make_store(cfg.store_path, cfg.n_cells, cfg.n_genes, cfg.n_classes, row_group_size=cfg.row_group_size)
    model = TabNet(cfg.n_genes, cfg.n_classes, n_d=cfg.n_d, n_a=cfg.n_a)
    model.load_state_dict(trained_states(cfg)[0])
    return model.eval(), Store(cfg.store_path), (f"the bench's TabNet ({cfg.n_genes:,} genes, n_d {cfg.n_d}, "
                                                 f"{cfg.train_steps}-step weights) on its store")


def run(args) -> str:
    from sctab.data.loaders import make_loader
    from sctab.train.loop import evaluate_loader

    kept = keep_freed_memory()  # as the training workers and the evaluate stage run
    model, store, what = bench_model(args)
    n_classes = store.n_classes
    backend = "sparse" if store.has_sparse else "stream"
    loader = make_loader(store, args.split, batch_size=args.batch_size, backend=backend, shuffle=False,
                         x_format="csr" if backend == "sparse" else "dense")
    weights, child = torch.ones(n_classes), torch.eye(n_classes)
    me = psutil.Process()
    run = RunRecord.start("benchmarks/eval_heap.py", args.argv, root=REPO)
    rows = []
    for p in range(1, args.passes + 1):
        t = time.perf_counter()
        out = evaluate_loader(model, loader, weights, child, torch.device("cpu"))
        h = heap_stats() or {}
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        rows.append((p, p * len(loader), out["rows"] * p, time.perf_counter() - t, me.memory_info().rss, peak, h))
        print(f"pass {p}: {rows[-1][1]} batches, RSS {rows[-1][4] / MIB:,.0f} MiB, heap free "
              f"{h.get('free', 0) / MIB:,.0f} MiB", file=sys.stderr, flush=True)
    release_freed_memory()
    live = me.memory_info().rss
    lines = [f"## Memory of repeated evaluation passes, {run.started:%Y-%m-%d %H:%M}", "",
             f"{run.command_text()}; every row from this invocation.", "",
             f"Machine: {machine_text()}. {run.load_summary().capitalize()}. Allocator: "
             f"{'freed memory kept (sctab.allocator)' if kept else 'glibc defaults'} (SCTAB_MALLOC={mode()}).", "",
             f"Model: {what}. Split `{args.split}` ({backend} loader), batches of {args.batch_size:,} cells, "
             f"{len(loader)} batches per pass; `sctab.train.loop.evaluate_loader`, as the training loop's "
             f"validation runs it.", "",
             "| Pass | Batches so far | Cells so far | Pass time | RSS | Peak RSS | Heap held | Heap free | "
             "Heap in use |", "|---|---|---|---|---|---|---|---|---|"]
    for p, batches, cells, secs, rss, hwm, h in rows:
        lines.append(f"| {p} | {batches:,} | {cells:,} | {secs:.1f} s | {rss / MIB:,.0f} MiB | {hwm / MIB:,.0f} MiB | "
                     f"{h.get('held', 0) / MIB:,.0f} MiB | {h.get('free', 0) / MIB:,.0f} MiB | "
                     f"{h.get('in_use', 0) / MIB:,.0f} MiB |")
    lines += ["", f"After the last pass, with the heaps' free memory given back (`malloc_trim`): RSS "
              f"{live / MIB:,.0f} MiB (live data, the model and the libraries)."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="benchmarks/eval_heap.py", description=DESCRIPTION)
    p.add_argument("--model", help="a model folder (models/<kind>/...; an ensemble's first member); default: "
                   "the bench's trained 19,331-gene TabNet")
    p.add_argument("--store", help="the store the model folder was trained on (with --model)")
    p.add_argument("--split", default="train", help="split to evaluate (default: %(default)s, the largest)")
    p.add_argument("--passes", type=int, default=3, help="evaluation passes (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=2048, help="cells per batch (default: %(default)s)")
    p.add_argument("--cache", default=str(REPO / "benchmarks" / ".cache"),
                   help="the bench's cache (without --model; default: %(default)s)")
    p.add_argument("--out", help="write the table here too (markdown)")
    a = p.parse_args(argv)
    a.argv = sys.argv[1:] if argv is None else argv
    if a.model and not a.store:
        p.error("--model needs --store (the store the model was trained on)")
    if a.passes < 1 or a.batch_size < 1:
        p.error("--passes and --batch-size must be at least 1")
    text = run(a)
    print(text)
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(text)
    return 0
