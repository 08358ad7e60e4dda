"""The benchmark cases of `make bench`: each measures our fast path ("ours") and its baseline in the same run.

A case is a function `(part, cfg) -> dict` registered in `REGISTRY` under a name; `part` is "ours" or
"baseline" (each runs in its own subprocess, so each gets its own peak memory). It returns
`{"samples": [...], "unit": ..., "label": ..., "check": {...}}`: throughput samples (one per repeat), what
was measured, and, for "ours", the exactness check (`exactness`: the reference TabNet in float32 and in float64) and
what the speed depends on (the masks' support sizes). `Case.run=None` registers a row whose benchmark does
not exist yet (shown as "not run").
"""

from __future__ import annotations

import contextlib
import copy
import json
import multiprocessing
import os
import resource
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
import torch.nn.functional as F
import yaml

from sctab.bench.checks import bounded
from sctab.bench.roofline import count_work
from sctab.bench.synthetic import VERSION, gene_profile, make_store, synthetic_counts
from sctab.data.loaders import SparseStreamLoader, StreamLoader, _GroupReader, make_loader
from sctab.data.store import Store
from sctab.io import atomic_dir
from sctab.models.entmax import entmax15, entmax15_sort
from sctab.models.reference_tabnet import ReferenceTabNet
from sctab.models.tabnet import TabNet

# anndata and sctab.annotation are imported in the annotate row only: .venv-merlin, which runs this module for
# the merlin row, lacks them, and every other row's subprocess would carry them in its peak RSS.


@dataclass
class Config:
    """Shapes of one bench run: the paper's (default) or tiny ones (`--quick`)."""

    n_genes: int = 19_331
    n_classes: int = 164
    n_cells: int = 40_960
    batch_size: int = 2048
    block_row_groups: int = 8
    row_group_size: int = 1024
    repeats: int = 5
    n_d: int = 128
    n_a: int = 64
    model_batches: int = 2  # batches per inference repeat
    memory_rows: int = 16_384  # the in-memory baseline holds this many rows (dense), not the whole store
    annotate_cells: int = 100_000  # the raw-count h5ad of the annotate row
    annotate_baseline_cells: int = 8192
    annotate_repeats: int = 3  # each repeat annotates every cell (~2 min here): the row states its repeats
    train_steps: int = 200  # the short training run whose weights every model row uses (cached)
    train_batch: int = 512
    train_lr: float = 0.02  # the tiny profile's sctab lr: the masks start selecting genes within ~100 steps
    e2e_batches: int = 8  # batches per repeat of the end-to-end training row (loader + step)
    merlin_batches: int = 4  # the merlin row reads this many batches per repeat (see loader_merlin)
    merlin_repeats: int = 2
    anchor_repeats: int = 3  # timed epochs per anchor row (after one untimed epoch that checks every cell)
    members: int = 5  # the annotate row's ensemble
    member_steps: int = 20  # members 1.. continue the run this many steps on their own shuffle
    cache: str = "benchmarks/.cache"
    device: str = "cpu"  # where the device rows run (`--device`); the other rows always run on the CPU

    @classmethod
    def quick(cls, cache: str = "benchmarks/.cache") -> "Config":
        return cls(n_genes=2000, n_classes=20, n_cells=4096, batch_size=256, block_row_groups=2,
                   row_group_size=256, repeats=3, n_d=16, n_a=8, model_batches=2, memory_rows=2048,
                   annotate_cells=3000, annotate_baseline_cells=1000,
                   train_steps=20, train_batch=128, member_steps=3, e2e_batches=4, cache=cache)

    @property
    def store_path(self) -> Path:
        return Path(self.cache) / (f"store-v{VERSION}-{self.n_genes}g-{self.n_classes}c-{self.n_cells}n-"
                                   f"{self.row_group_size}rg")


@dataclass
class Case:
    name: str
    figure: str
    target: Optional[float]  # ours must reach this (same unit as the samples); None = informational
    run: Optional[Callable[[str, Config], dict]]
    baseline: str = ""
    note: str = ""
    device_row: bool = False  # ours on Config.device, baseline on the CPU; run only with `--device`
    max_rss_mib: Optional[float] = None  # ours must also stay below this peak RSS to meet the target
    min_ratio: Optional[float] = None  # ours / baseline (same run) must reach this to meet the target
    baseline_venv: Optional[str] = None  # the baseline runs in this venv's python (a row skipped without it)


REGISTRY: dict[str, Case] = {}


def register(name: str, figure: str, target: Optional[float], run, baseline: str = "", note: str = "",
             device_row: bool = False, max_rss_mib: Optional[float] = None,
             min_ratio: Optional[float] = None, baseline_venv: Optional[str] = None) -> None:
    """Add (or replace) a row of the bench table."""
    REGISTRY[name] = Case(name, figure, target, run, baseline, note, device_row, max_rss_mib, min_ratio,
                          baseline_venv)


class Rates:
    """Wall-clock rates (the figures) and CPU-time rates: items / (process CPU seconds / cores), i.e. the
    rate if every core were ours. On a machine shared with other jobs the CPU-time rate shows what the
    code costs, the wall-clock one what this run got; both are reported."""

    def __init__(self):
        self.wall: list[float] = []
        self.cpu: list[float] = []
        self.cores = os.cpu_count() or 1

    def start(self) -> None:
        self._t, self._c = time.perf_counter(), time.process_time()

    def stop(self, n: int) -> None:
        self.wall.append(n / (time.perf_counter() - self._t))
        self.cpu.append(n / max((time.process_time() - self._c) / self.cores, 1e-9))

    def result(self, **kw) -> dict:
        return {"samples": self.wall, "cpu_samples": self.cpu, **kw}


def _store(cfg: Config):
    return Store(make_store(cfg.store_path, cfg.n_cells, cfg.n_genes, cfg.n_classes,
                            row_group_size=cfg.row_group_size))


def _loader_rate(ld, repeats: int, max_batches: Optional[int] = None) -> Rates:
    """cells/s over one epoch (or `max_batches` batches) per repeat, a different shuffle each time: cells
    delivered in batches over the time from asking for the first batch to receiving the last, so the epoch's
    first block (read before the first batch) is included, as it is for every loader row and baseline."""
    rates = Rates()
    for r in range(repeats):
        ld.set_epoch(r)
        n = 0
        rates.start()
        for i, b in enumerate(ld):
            n += len(b)
            if max_batches is not None and i + 1 >= max_batches:
                break
        rates.stop(n)
    return rates


class ReadAheadStreamLoader(StreamLoader):
    """The dense layout's stream loader with the sparse loader's read-ahead (the same number of background
    threads, each reading a whole block into its own buffer): the like-for-like baseline of the CSR loader,
    so the ratio measures the layout, not the threads."""

    read_ahead = SparseStreamLoader.read_ahead
    _fetched = SparseStreamLoader._fetched

    def __init__(self, store, split, **kw):
        super().__init__(store, split, **kw)
        self._local = threading.local()

    def _fetch(self, block):
        reader = getattr(self._local, "reader", None)
        if reader is None:  # parquet file handles are not shared between threads
            reader = self._local.reader = _GroupReader(self.store, self.split_name, self.columns)
        buf = reader.empty(block.n_rows)
        at = 0
        for g, sel in zip(block.groups, block.select):
            at += reader.read_into(g, sel, buf, at)
        return buf, None, (1 + self.read_ahead) * block.n_rows


# ------------------------------------------------------------------------------------------- loaders
def loader_sparse(x_format: str):
    def run(part: str, cfg: Config) -> dict:
        store = _store(cfg)
        kw = dict(batch_size=cfg.batch_size, shuffle=True, seed=0, block_row_groups=cfg.block_row_groups)
        if part == "ours":
            ld = make_loader(store, "train", backend="sparse", x_format=x_format, **kw)
            rates = _loader_rate(ld, cfg.repeats)
            # same batches as the dense layout: the first batch of epoch 0, compared byte for byte
            ld.set_epoch(0)
            ref = make_loader(store, "train", backend="stream", **kw)
            a, b = next(iter(ld)), next(iter(ref))
            xa = a.x.to_dense() if x_format == "csr" else a.x
            same = bool(xa.numpy().tobytes() == b.x.numpy().tobytes() and (a.y == b.y).all())
            return rates.result(unit="cells/s", label=f"sparse layout -> {x_format} torch batches",
                                check={"same batch as dense layout": same},
                                info={"max rows buffered": ld.max_rows_buffered})
        if x_format == "csr":  # a whole epoch, like ours: every cell read is delivered
            ld = ReadAheadStreamLoader(store, "train", rank=0, world_size=1, rows=None, drop_last=False,
                                       columns=(), **kw)
            return _loader_rate(ld, cfg.repeats).result(
                unit="cells/s", label=f"dense layout (stream, {ld.read_ahead} read-ahead threads, whole epoch)")
        ld = make_loader(store, "train", backend="memory", rows=np.arange(cfg.memory_rows), **kw)
        _loader_rate(ld, 1)  # the first epoch loads the rows into memory: not timed
        return _loader_rate(ld, cfg.repeats).result(unit="cells/s", label=f"in-memory dense ({cfg.memory_rows} rows)")
    return run


def loader_merlin(part: str, cfg: Config) -> dict:
    """Run in .venv-merlin (the runner switches interpreter); baseline: our sparse loader.

    Both read the first ``merlin_batches`` batches of an epoch per repeat (``merlin_repeats``), the first
    block's read included: at the paper's dimension merlin on the CPU delivers a few hundred cells/s and holds
    the dense epoch in memory (10 GB after 7 minutes here), so whole epochs would take most of the bench."""
    store = _store(cfg)
    kw = dict(batch_size=cfg.batch_size, shuffle=True, seed=0, block_row_groups=cfg.block_row_groups)
    reps, nb = min(cfg.repeats, cfg.merlin_repeats), cfg.merlin_batches
    if part == "ours":  # a fresh loader per repeat: continuing one after an abandoned epoch deadlocked merlin
        rates = Rates()
        for r in range(reps):
            one = _loader_rate(make_loader(store, "train", backend="merlin", **{**kw, "seed": r}), 1, nb)
            rates.wall += one.wall
            rates.cpu += one.cpu
        return rates.result(unit="cells/s",
                            label=f"merlin-dataloader (dense layout, CPU), first {nb} batches of an epoch")
    ld = make_loader(store, "train", backend="sparse", x_format="csr", **kw)
    return _loader_rate(ld, reps, nb).result(unit="cells/s",
                                             label=f"our sparse loader (csr), first {nb} batches of an epoch")


def loader_anchor(anchor: str, x_format: str, cold: bool):
    """A loader anchor (sctab.bench.anchors) against our sparse loader on the same cells, batch size and
    output. The anchor part runs in the anchor's venv (Case.baseline_venv); its format is written once (timed)."""
    def run(part: str, cfg: Config) -> dict:
        from sctab.bench import anchors as A

        store = _store(cfg)
        source, labels, _ = A.source_cells(store)
        reps = min(cfg.repeats, cfg.anchor_repeats)
        if part == "ours":
            ld, files = A.OurLoader(store, cfg.batch_size, x_format, cfg.block_row_groups), store.root
            label, extra = f"our sparse loader -> {x_format}", {}
        else:
            files, write_s = A.anchor_format(store, anchor, Path(cfg.cache))
            ld = A.anchor_loader(anchor, files, cfg.batch_size, x_format)
            label = f"{A.TITLES[anchor]} on its {A.FORMATS[anchor]} -> {x_format}"
            extra = {f"time to write the {A.FORMATS[anchor]} (s)": write_s,
                     "DataLoader workers (not in peak RSS)": A.anchor_workers(anchor, x_format)}
        m = A.measure(ld, files, reps, cold, source, labels)
        check = {"cells wrong vs the store (missing, repeated or other values)": bounded(m["mismatches"], 0)}
        return {"samples": m["samples"], "cpu_samples": m["cpu_samples"], "unit": "cells/s", "label": label,
                "check": check, "info": {**extra, **m["info"]}}
    return run


# ------------------------------------------------------------------------------------------- model
#: bump when the short training run below changes: cached weights are keyed by it
WEIGHTS_VERSION = 1
#: the exactness criterion of every model row: ours may be at most this many times further from the
#: float64 result than the reference float32 model is, and must pick the reference's class for every cell
EXACT_FACTOR = 4.0


def _weights_path(cfg: Config) -> Path:
    return Path(cfg.cache) / (f"weights-v{VERSION}.{WEIGHTS_VERSION}-{cfg.n_genes}g-{cfg.n_classes}c-"
                              f"{cfg.n_cells}n-d{cfg.n_d}a{cfg.n_a}-{cfg.train_steps}s-{cfg.members}m.pt")


def _train_weights(cfg: Config) -> None:
    """A short training run on the bench store (fast path, AdamW at the tiny profile's lr and the paper's
    weight decay), so masks have the support sizes of a model in use, not of random weights. Member 0 is
    that run; members 1.. continue it for `member_steps` steps each on their own shuffle (distinct weights,
    same regime). Saved as a list of state dicts at _weights_path.

    On one thread: float32 sums in an order fixed by the code alone, so the weights (and the exactness checks
    judged on them) are the same on every machine, whatever its cores. Multi-threaded, the sums followed the
    thread count, so the quick bench's freshly trained weights could differ between machines; its exactness
    check failed on some fresh-clone test runs under heavy load and passed on others."""
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _train_weights_on_this_thread(cfg)
    finally:
        torch.set_num_threads(threads)


def _train_weights_on_this_thread(cfg: Config) -> None:
    store = _store(cfg)
    model = TabNet(cfg.n_genes, cfg.n_classes, n_d=cfg.n_d, n_a=cfg.n_a).train()

    def run(m, steps, seed):
        opt = torch.optim.AdamW(m.parameters(), lr=cfg.train_lr, weight_decay=0.05)
        ld = make_loader(store, "train", batch_size=cfg.train_batch, shuffle=True, seed=seed, backend="sparse",
                         x_format="csr", block_row_groups=cfg.block_row_groups, drop_last=True)
        done, epoch = 0, 0
        while done < steps:
            ld.set_epoch(epoch)
            for b in ld:
                logits, m_loss = m(b.x)
                loss = F.cross_entropy(logits, b.y) + m.lambda_sparse * m_loss
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                done += 1
                if done >= steps:
                    break
            epoch += 1
        return {k: v.detach().clone() for k, v in m.state_dict().items()}

    states = [run(model, cfg.train_steps, 0)]
    for i in range(1, cfg.members):
        member = copy.deepcopy(model)
        member.load_state_dict(states[0])
        torch.manual_seed(i)
        states.append(run(member, cfg.member_steps, i))
    path = _weights_path(cfg)
    tmp = path.with_suffix(".tmp")
    torch.save(states, tmp)
    os.replace(tmp, path)


def _report_errors(fn, args: tuple, conn) -> None:
    """Run fn(*args) in the child; on an error send its type and message to the parent, then fail as usual."""
    try:
        fn(*args)
    except BaseException as e:
        conn.send(f"{type(e).__name__}: {e}"[:2000])  # a short message: the pipe never blocks the child's exit
        raise


def _in_spawned_process(fn, *args) -> None:
    """Run fn(*args) in a fresh process: building cached inputs must not count in this part's peak RSS.
    A failure there names its cause (the child's exception), not only its exit code."""
    ctx = multiprocessing.get_context("spawn")
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_report_errors, args=(fn, args, send))
    proc.start()
    send.close()
    proc.join()
    if proc.exitcode != 0:
        why = (recv.recv() if recv.poll() else
               f"exit {proc.exitcode} without a Python error (killed by a signal, or out of memory?)")
        raise RuntimeError(f"{fn.__name__} failed in its process: {why}")


def trained_states(cfg: Config) -> list[dict]:
    """The members' trained state dicts (trained once, cached under cfg.cache)."""
    if not _weights_path(cfg).exists():
        _in_spawned_process(_train_weights, cfg)
    return torch.load(_weights_path(cfg), weights_only=True)


def _model_and_batches(cfg: Config, n_batches: int, member: int = 0):
    """Trained TabNet `member` (eval BN statistics from its training run) and n_batches real batches."""
    states = trained_states(cfg)
    torch.manual_seed(0)
    store = _store(cfg)
    ld = make_loader(store, "train", batch_size=cfg.batch_size, shuffle=True, seed=1, backend="sparse",
                     x_format="csr", block_row_groups=cfg.block_row_groups, drop_last=True)
    batches = []
    for b in ld:
        batches.append(b)
        if len(batches) >= n_batches:
            break
    model = TabNet(cfg.n_genes, cfg.n_classes, n_d=cfg.n_d, n_a=cfg.n_a)
    model.load_state_dict(states[member])
    return model, batches


def support_sizes(model, inputs) -> np.ndarray:
    """Genes in each cell's attention mask (every step), on the fast path: what top-k entmax's speed hangs on."""
    with torch.no_grad():
        return np.concatenate([(m > 0).sum(1).numpy() for x in inputs for m in model.forward_masks(x)])


def support_text(sizes: np.ndarray) -> str:
    q = np.percentile(sizes, [50, 90, 99]).round().astype(int)
    return f"{len(sizes):,} masks: median {q[0]}, p90 {q[1]}, p99 {q[2]}, max {int(sizes.max())} genes"


def exactness(ours: list[torch.Tensor], reference: list[torch.Tensor], f64: list[torch.Tensor],
              reference_variants: tuple = ()) -> dict:
    """The criterion of every model and annotate row: probabilities of ours and of the reference model (float32)
    against a float64 copy of the reference on the same inputs. Ours passes when its largest error is at most
    EXACT_FACTOR times the reference's float32 error and it picks the reference's class for every cell (ties
    within that bound aside). Returns ``{"check": ..., "info": ...}`` (sctab.bench.checks).

    The reference's float32 error is the worst over ``reference`` and each of ``reference_variants`` (the same
    cells in the same order, computed another way), over all the cells. The rows evaluate everything on one
    thread (one_thread()), where the error is a fixed function of the code, weights and cells; multi-threaded,
    it moved with the machine's load (5.7e-8 in some bench runs and 8.0e-6 in others, same weights and batches).

    Why relative: float32 sums in another order (sparse products, top-k entmax) move probabilities by about
    as much as float32 rounding does in the reference model, and that size depends on the weights and the
    batch; an absolute bound (1e-5) failed on trained weights while ours was as close to float64 as the
    reference was."""
    ours_c, tb_c, ref = torch.cat(ours).double(), torch.cat(reference).double(), torch.cat(f64).double()
    err_ours = float((ours_c - ref).abs().max())
    err_draws = [float((tb_c - ref).abs().max())]
    for v in reference_variants:
        err_draws.append(float((torch.cat(v).double() - ref).abs().max()))
    err_tb = max(err_draws)
    bound = tie_bound(err_tb)
    a_ours, a_tb = ours_c.argmax(1), tb_c.argmax(1)
    # a cell whose two classes float64 itself puts within the rounding bound is a tie: either class is right
    gap = (ref.gather(1, a_tb[:, None]) - ref.gather(1, a_ours[:, None])).abs().squeeze(1)
    other = a_ours != a_tb
    tie = other & (gap <= bound)
    differ = int((other & ~tie).sum())
    return {"check": {f"max |p - p_f64| (<= {EXACT_FACTOR:g}x reference f32 error)": bounded(err_ours, bound),
                      "cells with another class than the reference's (ties aside)": bounded(differ, 0)},
            "info": {"reference f32 vs f64": err_tb,
                     "draws": " / ".join(f"{e:.1e}" for e in err_draws),
                     "ties within rounding": int(tie.sum())}}


def tie_bound(err_reference: float) -> float:
    """The criterion's bound on the error (EXACT_FACTOR x the reference's float32 error, at least 1e-7); two
    classes closer than this in float64 are a tie at float32."""
    return EXACT_FACTOR * max(err_reference, 1e-7)


@contextlib.contextmanager
def one_thread():
    """Torch on one thread inside the block. The exactness check runs there: a multi-threaded float32 evaluation
    sums in an order that depends on how many threads the GEMM and reduction kernels got, which the machine's
    load decides (the plain model's error on the same weights and batches was 5.7e-8 in some bench runs and 8.0e-6
    in others); on one thread the order is the code's, so the check is a fixed function of the code, the
    weights and the cells."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _exactness(model, batches, inputs) -> dict:
    """exactness() of one model on the measured batches, plus the support sizes its masks have there."""
    with torch.no_grad(), one_thread():
        dense = [b.x.to_dense() for b in batches]
        reference = ReferenceTabNet.like(model)
        ref = [torch.softmax(reference(x)[0], -1) for x in dense]
        m64 = reference.double()
        p64 = [torch.softmax(m64(x.double())[0], -1) for x in dense]
        del m64, reference
        got = [torch.softmax(model(x)[0], -1) for x in inputs]
    with torch.no_grad():
        sizes = support_sizes(model, inputs)
    res = exactness(got, ref, p64)
    res["info"]["support"] = support_text(sizes)
    return res


def csr_path(model, x: torch.Tensor) -> str:
    """Which first-layer path a CSR batch takes in eval on the CPU (the encoder's densify threshold decides)."""
    if x.layout != torch.sparse_csr:
        return ""
    density = x.values().numel() / (x.shape[0] * x.shape[1])
    above = model.encoder.csr_densify_above
    return (f" ({density:.1%} non-zero > {above:.0%}: densified, dense first layer ran)" if density > above
            else f" ({density:.1%} non-zero <= {above:.0%}: sparse first layer ran)")


def sctab_inference(x_format: str):
    def run(part: str, cfg: Config) -> dict:
        model, batches = _model_and_batches(cfg, cfg.model_batches)
        model.eval()
        fast = part == "ours"
        inputs = [b.x if (fast and x_format == "csr") else b.x.to_dense() for b in batches]
        check, info = {}, {}
        with torch.no_grad():
            if fast:
                res = _exactness(model, batches, inputs)
                check, info = res["check"], res["info"]
            net = model if fast else ReferenceTabNet.like(model)
            net(inputs[0])  # warm-up (entmax k adapts to the support size)
            rates = Rates()
            for _ in range(cfg.repeats):
                rates.start()
                rates.stop(sum(int(net(x)[0].shape[0]) for x in inputs))
            n0 = int(inputs[0].shape[0])
            work = {**count_work(lambda: net(inputs[0]), n0), "what": f"one batch of {n0:,} cells"}
        label = (f"fast path, {x_format} input{csr_path(model, inputs[0])}" if fast
                 else "reference TabNet (sort entmax, dense), dense input")
        return rates.result(unit="cells/s", label=label, check=check, info=info, work=work)
    return run


def sctab_train_step(part: str, cfg: Config) -> dict:
    model, batches = _model_and_batches(cfg, 1)
    x, y = batches[0].x.to_dense(), batches[0].y
    fast = part == "ours"
    check = {}
    if fast:  # same loss on a fixed batch, from the same state
        losses = []
        for m in (ReferenceTabNet.like(model), copy.deepcopy(model)):
            torch.manual_seed(5)
            logits, m_loss = m(x)
            losses.append(float(F.cross_entropy(logits, y) + m.lambda_sparse * m_loss))
        check["|loss - loss_reference|"] = bounded(abs(losses[0] - losses[1]), 1e-5)
    model = (model if fast else ReferenceTabNet.like(model)).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def step():
        logits, m_loss = model(x)
        loss = F.cross_entropy(logits, y) + model.lambda_sparse * m_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()  # warm-up
    rates = Rates()
    for _ in range(cfg.repeats):
        rates.start()
        step()
        rates.stop(len(y))
    work = {**count_work(step, len(y)), "what": f"one step (fwd, bwd, AdamW) on {len(y):,} cells"}
    label = "fast path (top-k entmax, sparse masked input)" if fast else "reference TabNet (sort entmax, dense)"
    return rates.result(unit="cells/s", label=label, check=check, work=work)


def e2e_batches(cfg: Config):
    """The train stage's loader over the bench store (sparse layout, CSR batches, read-ahead) and a generator of
    an epoch's first ``cfg.e2e_batches`` batches: what both training-loop rows (CPU and device) feed their steps."""
    ld = make_loader(_store(cfg), "train", batch_size=cfg.batch_size, shuffle=True, seed=3, backend="sparse",
                     x_format="csr", block_row_groups=cfg.block_row_groups, drop_last=True)

    def batches(epoch: int):
        ld.set_epoch(epoch)
        for i, b in enumerate(ld):
            if i >= cfg.e2e_batches:
                break
            yield b
    return batches


def train_end_to_end(part: str, cfg: Config) -> dict:
    """The train stage's inner loop (``sctab.train.loop.train_step``) fed by its real loader, against the same
    steps on the same batches read beforehand (the isolated step). Ours: the sparse loader (CSR batches, its
    read-ahead threads) and the steps, timed together; baseline: the loader's batches for that epoch read
    first, then only the steps timed. Both start from the trained weights, with the training loop's AdamW."""
    from sctab.train.loop import train_step

    model, _ = _model_and_batches(cfg, 1)
    batches = e2e_batches(cfg)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    cpu = torch.device("cpu")
    lam = float(model.lambda_sparse)

    ours = part == "ours"
    check = {}
    if ours:  # the loader-fed steps compute what the isolated steps do: the same losses, bit for bit
        losses = []
        for fed in (True, False):
            m = copy.deepcopy(model)
            o = torch.optim.AdamW(m.parameters(), lr=1e-3, weight_decay=0.05)
            src = batches(98) if fed else list(batches(98))
            torch.manual_seed(5)
            losses.append([float(train_step(m, b, o, cpu, lambda_sparse=lam)) for _, b in zip(range(2), src)])
        check["same losses as the isolated steps (2 steps)"] = len(losses[0]) == 2 and losses[0] == losses[1]
    train_step(model, next(iter(batches(99))), opt, cpu, lambda_sparse=lam)  # warm-up (entmax k adapts)
    rates = Rates()
    for r in range(cfg.repeats):
        src = batches(r) if ours else list(batches(r))
        rates.start()
        n = 0
        for b in src:
            loss = train_step(model, b, opt, cpu, lambda_sparse=lam)
            n += len(b)
        float(loss)
        rates.stop(n)
    label = ("sparse loader (read-ahead) + train_step, timed together" if ours
             else "train_step alone on the same batches, read beforehand")
    return rates.result(unit="cells/s", label=label, check=check)


def entmax_case(part: str, cfg: Config) -> dict:
    """The attentive transformer's mask on real scores: exact top-k entmax vs the full sort."""
    model, batches = _model_and_batches(cfg, 1)
    model.eval()
    with torch.no_grad():
        enc = model.encoder
        x = enc.initial_bn(batches[0].x.to_dense())
        att = enc.initial_splitter(x)[:, enc.n_d:]
        at = enc.att_transformers[0]
        scores = at.bn(at.fc(att))
        del x
        fn = entmax15 if part == "ours" else entmax15_sort
        check = {}
        if part == "ours":
            # the same sorted prefix gives the same threshold: bit for bit the full sort's result
            check["max |p - p_sort|"] = bounded((entmax15(scores) - entmax15_sort(scores)).abs().max(), 0.0)
        fn(scores)
        rates = Rates()
        for _ in range(cfg.repeats):
            rates.start()
            fn(scores)
            rates.stop(scores.shape[0])
    return rates.result(unit="cells/s", label="top-k exact" if part == "ours" else "full sort", check=check)


register("loader_csr", "Training loader: shuffled batches as torch sparse CSR (model input)", 50_000,
         loader_sparse("csr"), baseline="dense layout, stream backend")
register("loader_dense", "Training loader: shuffled batches as dense torch float32", 50_000,
         loader_sparse("dense"), baseline="in-memory dense loader")
register("loader_merlin", "merlin-dataloader (CPU, dense layout)", None, loader_merlin,
         baseline="our sparse loader", note="ours runs in .venv-merlin (built by `make merlin-env` when missing)")
for _anchor, _title, _venv in (("scdataset", "scDataset 0.3 (h5ad)", "anchors"),
                               ("tiledbsoma_ml", "tiledbsoma-ml 0.1 (SOMA)", "anchors"),
                               ("annbatch", "annbatch 0.3 (sharded zarr)", "annbatch")):
    for _fmt in ("csr", "dense"):
        for _cold in (False, True):
            register(f"anchor_{_anchor}_{_fmt}_{'cold' if _cold else 'warm'}",
                     f"Loader anchor {_title}: shuffled {'CSR' if _fmt == 'csr' else 'dense float32'} batches, "
                     f"{'cold (files dropped from the page cache before each epoch)' if _cold else 'warm'} "
                     "page cache, ours ahead", None, loader_anchor(_anchor, _fmt, _cold),
                     baseline=_title, min_ratio=1.0, baseline_venv=f".venv-{_venv}",
                     note=f"anchor in .venv-{_venv} (`make {_venv}-env`); docs/loader-anchors.md")
register("entmax", "1.5-entmax of the attention scores (batch x genes)", None, entmax_case,
         baseline="full-sort entmax (entmax15_sort)")
register("infer_dense", "scTab inference, dense batch", 7_000, sctab_inference("dense"),
         baseline="reference TabNet (sort entmax, dense)")
register("infer_csr", "scTab inference, sparse CSR batch", 7_000, sctab_inference("csr"),
         baseline="reference TabNet (sort entmax, dense)")
register("train_step", "scTab training step (fwd + bwd + AdamW)", 2_200, sctab_train_step,
         baseline="reference TabNet (sort entmax, dense)")
register("train_e2e", "Train stage end to end: loader + training step, within 10% of the isolated step", None,
         train_end_to_end, baseline="isolated step, same batches", min_ratio=0.9)
# ------------------------------------------------------------------------------------ sctab annotate
class _FlatOntology:
    """Benchmark classes are not CL terms: each is a child of 'cell' (enough for the coarse label)."""

    version = "bench"

    def ancestors(self, t):
        return {"CL:0000000"}

    def label(self, t):
        return "cell" if t == "CL:0000000" else f"type {t}"

    def n_ancestors(self, t):
        return 0 if t == "CL:0000000" else 1


def _annotate_root(cfg: Config, n_cells: int) -> Path:
    return Path(cfg.cache) / (f"annotate-v{VERSION}.{WEIGHTS_VERSION}-{cfg.n_genes}g-{cfg.n_classes}c-{n_cells}n-"
                              f"{cfg.members}m-{cfg.train_steps}s")


def _annotate_inputs(cfg: Config, n_cells: int) -> tuple[Path, Path]:
    """A raw-count h5ad of n_cells (10x-like sparsity, all genes) and a bundle of the trained members, cached."""
    import anndata

    from sctab.annotation.bundle import write_bundle

    root = _annotate_root(cfg, n_cells)
    h5ad, bundle = root / "cells.h5ad", root / "bundle"
    if (root / "done").exists():
        return h5ad, bundle
    states = trained_states(cfg)
    store = _store(cfg)
    var = store.var[["feature_id", "feature_name"]]
    with atomic_dir(root) as tmp:
        rng = np.random.default_rng(7)
        profile = gene_profile(np.random.default_rng([0, VERSION, 1]), cfg.n_genes, cfg.n_classes)
        blocks = []
        for start in range(0, n_cells, 4096):
            counts, _ = synthetic_counts(rng, min(4096, n_cells - start), profile)
            blocks.append(sp.csr_matrix(counts))
        adata = anndata.AnnData(sp.vstack(blocks).tocsr(), var=pd.DataFrame(index=var["feature_id"].to_numpy()))
        adata.obs_names = [f"c{i}" for i in range(n_cells)]
        adata.write_h5ad(tmp / "cells.h5ad")
        labels = store.classes
        folder = tmp / "models"
        for m, state in enumerate(states):
            d = folder / f"seed_{m}"
            d.mkdir(parents=True)
            torch.save(state, d / "model.pt")
            meta = {"model": "sctab", "arch": {"n_d": cfg.n_d, "n_a": cfg.n_a}, "n_genes": cfg.n_genes,
                    "n_classes": cfg.n_classes, "normalisation": {"target_sum": 10000.0, "log1p": True},
                    "run_id": "", "seed": m}
            (d / "model.yaml").write_text(yaml.safe_dump(meta))
            var.to_parquet(d / "var.parquet", index=False)
            pd.DataFrame({"label": labels}).to_parquet(d / "cell_type.parquet", index=False)
        (folder / "ensemble.json").write_text(json.dumps({"model": "sctab", "members": {
            f"seed_{m}": "" for m in range(len(states))}}))
        ids = {lab: f"CL:9{i:06d}" for i, lab in enumerate(labels)}
        write_bundle(folder, tmp / "bundle", class_ids=ids, ontology=_FlatOntology())
        (tmp / "done").write_text("ok")
    return h5ad, bundle


@contextlib.contextmanager
def reference_members(ann):
    """The annotator's members swapped for the reference TabNet with their weights (restored on exit)."""
    fast = [m.module for m in ann.bundle.members]
    for m in ann.bundle.members:
        m.module = ReferenceTabNet.like(m.module)
    try:
        yield ann
    finally:
        for m, module in zip(ann.bundle.members, fast):
            m.module = module


def _annotate_exactness(ann, h5ad: Path, written: Path, n: int) -> dict:
    """exactness() of the ensemble on the file's first n cells, through the annotator's own block path
    (gene matching, normalisation, members' mean), and the written labels equal to the fast path's."""
    import anndata

    from sctab.data.normalize import normalize_log1p

    counts = anndata.read_h5ad(h5ad, backed="r")[:n].to_memory().X  # the bundle's genes, in its order
    members = [m.module for m in ann.bundle.members]
    probs = {}
    with one_thread():  # see one_thread(): the check does not move with the machine's load
        probs[True] = torch.from_numpy(ann.predict_block(counts)[0])
        with reference_members(ann):
            probs[False] = torch.from_numpy(ann.predict_block(counts)[0])
        x = torch.from_numpy(normalize_log1p(counts, ann.bundle.target_sum))
        with torch.no_grad():
            p64 = torch.stack([torch.softmax(ReferenceTabNet.like(m).double()(x.double())[0], -1)
                               for m in members]).mean(0)
    res = exactness([probs[True]], [probs[False]], [p64])
    labels = np.asarray(ann.bundle.space.classes, dtype=object)[probs[True].argmax(1).numpy()]
    written_labels = anndata.read_h5ad(written, backed="r").obs["sctab_label"].to_numpy()[:n]
    # the file was written in blocks of another size (other float rounding): ties within rounding may go
    # either way there too
    bound = tie_bound(res["info"]["reference f32 vs f64"])
    differ, _ = label_mismatches(written_labels, labels, p64.numpy(), bound)
    res["check"]["written labels other than the fast path's (ties aside)"] = bounded(differ, 0)
    return res


def label_mismatches(labels, expected, ref_probs, tie: float) -> tuple[int, int]:
    """Cells whose label is not the expected one: (those that count, ties). A cell where the reference
    probabilities ``ref_probs`` put its two most likely classes within ``tie`` of each other is a tie (either
    class is right within rounding) and does not count. NaN rows (cells without counts) are never ties."""
    labels, expected = np.asarray(labels).astype(str), np.asarray(expected).astype(str)
    ref = np.asarray(ref_probs, dtype=np.float64)
    if not labels.shape == expected.shape == ref.shape[:1]:
        raise ValueError(f"{labels.shape[0]} labels, {expected.shape[0]} expected labels and {ref.shape[0]} rows "
                         "of probabilities: one of each per cell")
    top2 = np.partition(ref, -2, axis=1)[:, -2:] if ref.shape[1] > 1 else np.concatenate([ref, ref], 1)
    near = (top2[:, 1] - top2[:, 0]) <= tie  # NaN compares False
    other = labels != expected
    return int((other & ~near).sum()), int((other & near).sum())


def annotate_e2e(part: str, cfg: Config) -> dict:
    """`sctab annotate` (h5ad -> h5ad) with the 5 trained members. Ours: the fast TabNet path over every cell;
    baseline: the same command with the reference model (sort entmax), on the first annotate_baseline_cells.
    Ours is checked on the first 2,048 cells against the reference ensemble and a float64 one."""
    import anndata

    from sctab.annotation import annotate_file, load_annotator

    # build the inputs (once, cached) in another process, so their memory is not this part's peak RSS
    _in_spawned_process(_annotate_inputs, cfg, cfg.annotate_cells)
    h5ad, bundle = _annotate_inputs(cfg, cfg.annotate_cells)
    ann = load_annotator(bundle, device="cpu")
    fast = part == "ours"
    src = h5ad
    if not fast:  # the reference model is ~6x slower: time it on a slice
        src = Path(cfg.cache) / f"annotate-baseline-{_annotate_root(cfg, cfg.annotate_cells).name}-" \
                                f"{cfg.annotate_baseline_cells}.h5ad"
        if not src.exists():
            anndata.read_h5ad(h5ad, backed="r")[: cfg.annotate_baseline_cells].to_memory().write_h5ad(src)
    rates = Rates()
    out = Path(cfg.cache) / f"annotated-{part}.h5ad"
    n = None
    with contextlib.nullcontext() if fast else reference_members(ann):
        for _ in range(cfg.annotate_repeats):
            rates.start()
            report = annotate_file(src, out, ann, batch_size=cfg.batch_size, progress=False)
            rates.stop(report.n_cells)
            n = report.n_cells
        # the row's peak RSS is the annotation's: read before the check, whose float64 copies of the five
        # members and of a 2,048-cell batch (reference model: dense BN, full sort) take more than the annotation
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        res = _annotate_exactness(ann, h5ad, out, min(2048, n)) if fast else {"check": {}, "info": {}}
        out.unlink(missing_ok=True)
        work = _annotate_work(cfg, ann, h5ad, out, min(2048, n))  # of the members this part timed
    if fast:
        res["info"]["peak RSS with the check"] = f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MiB"
    label = (f"fast TabNet path, {n:,} cells" if fast else f"reference TabNet (sort entmax), {n:,} cells")
    return rates.result(unit="cells/s", label=label, check=res["check"], info=res["info"], peak_rss_mib=peak,
                        work=work)


def _annotate_work(cfg: Config, ann, h5ad: Path, out: Path, n: int) -> dict:
    """The torch work per cell of `sctab annotate` on the file's first n cells (every member's forward; reading
    and normalising the file in numpy/scipy is not counted)."""
    import anndata

    from sctab.annotation import annotate_file

    head = Path(cfg.cache) / f"annotate-work-{_annotate_root(cfg, cfg.annotate_cells).name}-{n}.h5ad"
    if not head.exists():
        anndata.read_h5ad(h5ad, backed="r")[:n].to_memory().write_h5ad(head)
    work = count_work(lambda: annotate_file(head, out, ann, batch_size=cfg.batch_size, progress=False), n)
    out.unlink(missing_ok=True)
    return {**work, "what": f"torch ops of {len(ann.bundle.members)} members on {n:,} cells (file I/O and "
                            "normalisation in numpy not counted)"}


register("annotate_e2e", "`sctab annotate` end to end, 100k cells, 5-member ensemble, < 4 GiB", 1_400,
         annotate_e2e, baseline="same command, reference model", max_rss_mib=4096)


# ------------------------------------------------------------------------------------------- device rows
# `--device cuda` (or cpu, to smoke them): ours on Config.device, the baseline the same work on the CPU. The
# targets are the for one H100: training >= 30,000 cells/s, inference >= 150,000 cells/s per model,
# and the loader (to the device, densified there) never the bottleneck, i.e. at least the training rate.
def _device(part: str, cfg: Config) -> torch.device:
    from sctab.models.device import resolve_device

    return resolve_device(cfg.device if part == "ours" else "cpu")


def _sync(dev: torch.device) -> None:
    """Wait for the device's queued work, so a timer sees it done (GPU calls return before they finish)."""
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _where(dev: torch.device) -> str:
    from sctab.models.device import device_name

    return "CPU" if dev.type == "cpu" else device_name(dev)


#: the device rows' bounds, from docs/gpu.md (what tests/test_gpu.py asserts of CUDA against the CPU):
#: float32 within 1e-4 abs + 1e-4 rel (forward), gradients within 1e-4 abs + 1e-3 rel; bf16-mixed within
#: 2e-2 abs + 2e-2 rel (forward) and a relative difference of the gradient vector below 2e-2
DEVICE_BOUNDS = {"32": {"loss": (1e-4, 1e-4), "grad": (1e-4, 1e-3)},
                 "bf16-mixed": {"loss": (2e-2, 2e-2), "grad_norm": 2e-2}}
#: the device's probabilities within this of the CPU's on the same weights and cells (docs/gpu.md)
DEVICE_PROB_ATOL = 1e-4
# Why every device row computes its check on one thread (one_thread()): the CPU side of a check is a float32
# evaluation whose summation order follows how many threads each kernel got, which the machine's load decides
# (see one_thread()). Where the device is the CPU itself (a machine without a GPU smoking the rows), a
# multi-threaded check compared two such evaluations: on CI, under the test suite's load, the inference row
# saw 1.2e-3 between two calls of the same model on the same batch, and the annotate row 1.2e-4 once here.
# On one thread both sides are fixed functions of the code, weights and cells; a GPU's side is unaffected.


def device_batches_equal(ld, dev: torch.device, ref) -> dict:
    """Epoch 0 of ``ld`` (CSR batches) densified on ``dev`` against epoch 0 of ``ref`` (the CPU loader's dense
    batches, same store, shuffle and seed): the same batches, value for value and label for label."""
    from sctab.models.device import model_input

    ld.set_epoch(0)
    ref.set_epoch(0)
    got, want = iter(ld), iter(ref)
    n = bad = 0
    for a in got:
        b = next(want, None)
        if b is None:
            return {"batches equal the CPU loader's": False, "_why": f"the device loader gave more than {n} batches"}
        x = model_input(a.x, dev, dense=True).cpu()
        bad += not (x.shape == b.x.shape and torch.equal(x, b.x) and torch.equal(a.y.cpu(), b.y))
        n += 1
    if next(want, None) is not None:
        return {"batches equal the CPU loader's": False, "_why": f"the device loader gave only {n} batches"}
    return {"batches equal the CPU loader's": bad == 0 and n > 0, "_why": f"{bad} of {n} batches differ"}


def device_loader(part: str, cfg: Config) -> dict:
    """Shuffled CSR batches from the sparse layout, copied to the device (pinned, non-blocking) and densified.
    Ours is checked against the CPU loader's dense batches over a whole epoch."""
    from sctab.models.device import model_input

    dev = _device(part, cfg)
    kw = dict(batch_size=cfg.batch_size, shuffle=True, seed=0, block_row_groups=cfg.block_row_groups)
    ld = make_loader(_store(cfg), "train", backend="sparse", x_format="csr", **kw)
    rates = Rates()
    for r in range(cfg.repeats):
        ld.set_epoch(r)
        n = 0
        rates.start()
        for b in ld:
            x = model_input(b.x, dev, dense=True)
            b.y.to(dev, non_blocking=True)
            n += x.shape[0]
        _sync(dev)
        rates.stop(n)
    check, info = {}, {}
    if part == "ours":
        res = device_batches_equal(ld, dev, make_loader(_store(cfg), "train", backend="sparse", x_format="dense", **kw))
        info["epoch 0 compared"] = res.pop("_why")
        check.update(res)
    return rates.result(unit="cells/s", label=f"sparse loader -> dense batches on {_where(dev)}", check=check,
                        info=info)


def _loss_and_grads(model, x, y, dev: torch.device, precision: str) -> tuple[float, list[torch.Tensor]]:
    """One forward and backward pass of the training step (no optimizer update) on a copy of ``model`` placed
    on ``dev``: the loss and every parameter's gradient, on the CPU."""
    from sctab.models.device import autocast, model_input

    m = copy.deepcopy(model).to(dev).train()
    xd, yd = model_input(x, dev, dense=True), y.to(dev)
    torch.manual_seed(5)
    with autocast(dev, precision):
        logits, m_loss = m(xd)
    loss = F.cross_entropy(logits.float(), yd) + m.lambda_sparse * m_loss.float()
    loss.backward()
    grads = [p.grad.detach().float().cpu() if p.grad is not None else torch.zeros(p.shape) for p in m.parameters()]
    return float(loss.detach()), grads


def step_agreement(loss: float, grads: list[torch.Tensor], ref_loss: float, ref_grads: list[torch.Tensor],
                   precision: str) -> dict:
    """The device step's loss and gradients against the CPU's, judged with docs/gpu.md's bounds for the
    precision (DEVICE_BOUNDS). An allclose bound |a - b| <= atol + rtol |b| is reported as the largest
    |a - b| / (atol + rtol |b|), which passes at <= 1."""
    if precision not in DEVICE_BOUNDS:
        raise ValueError(f"no device bounds for precision {precision!r}; known: {', '.join(DEVICE_BOUNDS)}")
    if len(grads) != len(ref_grads):
        raise ValueError(f"{len(grads)} gradients against {len(ref_grads)} of the reference")
    b = DEVICE_BOUNDS[precision]
    atol, rtol = b["loss"]
    check = {f"|loss - loss_cpu| / ({atol:g} + {rtol:g} |loss_cpu|)":
             bounded(abs(loss - ref_loss) / (atol + rtol * abs(ref_loss)), 1.0)}
    if "grad" in b:
        atol, rtol = b["grad"]
        worst = max(float(((g - r).abs() / (atol + rtol * r.abs())).max()) if g.numel() else 0.0
                    for g, r in zip(grads, ref_grads))
        check[f"max |grad - grad_cpu| / ({atol:g} + {rtol:g} |grad_cpu|)"] = bounded(worst, 1.0)
    else:
        g, r = torch.cat([t.flatten() for t in grads]), torch.cat([t.flatten() for t in ref_grads])
        check["|grad - grad_cpu| / |grad_cpu| (whole vector)"] = bounded(float((g - r).norm() / r.norm()),
                                                                        b["grad_norm"])
    return check


def device_train_step(precision: str):
    def run(part: str, cfg: Config) -> dict:
        from sctab.models.device import autocast, model_input

        dev = _device(part, cfg)
        model, batches = _model_and_batches(cfg, 1)
        check = {}
        if part == "ours":  # the same step on the CPU, from the same weights, on the same batch (one thread)
            with one_thread():
                got = _loss_and_grads(model, batches[0].x, batches[0].y, dev, precision)
                ref = _loss_and_grads(model, batches[0].x, batches[0].y, torch.device("cpu"), precision)
            check = step_agreement(*got, *ref, precision)
        model.to(dev).train()
        x = model_input(batches[0].x, dev, dense=True)
        y = batches[0].y.to(dev)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

        def step():
            with autocast(dev, precision):
                logits, m_loss = model(x)
            loss = F.cross_entropy(logits.float(), y) + model.lambda_sparse * m_loss.float()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        step()  # warm-up (kernels, entmax k)
        _sync(dev)
        rates = Rates()
        for _ in range(cfg.repeats):
            rates.start()
            for _ in range(4):
                step()
            _sync(dev)
            rates.stop(4 * len(y))
        return rates.result(unit="cells/s", label=f"fast path, {precision}, on {_where(dev)}", check=check)
    return run


def device_train_e2e(part: str, cfg: Config) -> dict:
    """The train stage's loop on the device as it runs there: the sparse loader reading CSR batches from disk
    (read-ahead threads), each batch copied to the device and densified there, and ``train_step`` (ours);
    the same loop on the CPU (baseline). Checked: the first step's loss on the device equals the CPU's from the
    same weights and batch within docs/gpu.md's float32 bound."""
    from sctab.train.loop import train_step

    dev = _device(part, cfg)
    model, _ = _model_and_batches(cfg, 1)
    batches = e2e_batches(cfg)
    lam = float(model.lambda_sparse)

    def first_loss(where: torch.device) -> float:
        m = copy.deepcopy(model).to(where).train()
        o = torch.optim.AdamW(m.parameters(), lr=1e-3, weight_decay=0.05)
        torch.manual_seed(5)
        return float(train_step(m, next(iter(batches(98))), o, where, lambda_sparse=lam))

    check = {}
    if part == "ours":  # one step: after an update Adam's normalised steps amplify float32 differences near 0
        with one_thread():
            got, ref = first_loss(dev), first_loss(torch.device("cpu"))
        atol, rtol = DEVICE_BOUNDS["32"]["loss"]
        check["|loss - loss_cpu| / (1e-4 + 1e-4 |loss_cpu|), first step"] = bounded(
            abs(got - ref) / (atol + rtol * abs(ref)), 1.0)
    model.to(dev).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    train_step(model, next(iter(batches(99))), opt, dev, lambda_sparse=lam)  # warm-up (kernels, entmax k)
    _sync(dev)
    rates = Rates()
    for r in range(cfg.repeats):
        rates.start()
        n = 0
        for b in batches(r):
            loss = train_step(model, b, opt, dev, lambda_sparse=lam)
            n += len(b)
        float(loss)  # one synchronisation per repeat, as the loop has one per epoch
        rates.stop(n)
    return rates.result(unit="cells/s", label=f"sparse loader from disk + train_step on {_where(dev)}", check=check)


def device_inference(part: str, cfg: Config) -> dict:
    """The fast path on CSR batches copied to the device (what evaluation and annotation run)."""
    from sctab.models.device import model_input

    dev = _device(part, cfg)
    model, batches = _model_and_batches(cfg, cfg.model_batches)
    model.to(dev).eval()
    check = {}
    with torch.no_grad():
        if part == "ours":  # the device computes what the CPU does, on each batch (one thread: see DEVICE_PROB_ATOL)
            cpu_model = copy.deepcopy(model).cpu()
            diff = 0.0
            with one_thread():
                for b in batches:
                    got = torch.softmax(model(model_input(b.x, dev, dense=False))[0], -1).cpu()
                    diff = max(diff, float((got - torch.softmax(cpu_model(b.x)[0], -1)).abs().max()))
            check["max |p_device - p_cpu|"] = bounded(diff, DEVICE_PROB_ATOL)
        model(model_input(batches[0].x, dev, dense=False))  # warm-up
        _sync(dev)
        rates = Rates()
        for _ in range(cfg.repeats):
            rates.start()
            n = sum(int(model(model_input(b.x, dev, dense=False))[0].shape[0]) for b in batches)
            _sync(dev)
            rates.stop(n)
    return rates.result(unit="cells/s", label=f"fast path, csr input, on {_where(dev)}", check=check)


def device_annotate(part: str, cfg: Config) -> dict:
    """`sctab annotate` end to end with the 5-member ensemble on the device (the CPU for the baseline)."""
    from sctab.annotation import annotate_file, load_annotator

    dev = _device(part, cfg)
    _in_spawned_process(_annotate_inputs, cfg, cfg.annotate_cells)
    h5ad, bundle = _annotate_inputs(cfg, cfg.annotate_cells)
    ann = load_annotator(bundle, device=str(dev))
    out = Path(cfg.cache) / f"annotated-device-{part}.h5ad"
    rates, n = Rates(), 0
    for _ in range(cfg.annotate_repeats):
        rates.start()
        n = annotate_file(h5ad, out, ann, batch_size=cfg.batch_size, progress=False).n_cells
        rates.stop(n)
    check, info = {}, {}
    out.unlink(missing_ok=True)
    if part == "ours":  # the first cells annotated again, device and CPU on one thread (see DEVICE_PROB_ATOL)
        import anndata

        m = min(n, 8192)
        first, written = Path(cfg.cache) / "annotate-device-check.h5ad", Path(cfg.cache) / "annotated-check.h5ad"
        anndata.read_h5ad(h5ad, backed="r")[:m].to_memory().write_h5ad(first)
        try:
            with one_thread():
                annotate_file(first, written, ann, batch_size=cfg.batch_size, progress=False)
                check, info = device_annotate_agreement(first, written, bundle, m, cfg.batch_size)
        finally:
            first.unlink(missing_ok=True)
            written.unlink(missing_ok=True)
    return rates.result(unit="cells/s", label=f"fast TabNet path on {_where(dev)}, {n:,} cells", check=check,
                        info=info)


def device_annotate_agreement(h5ad: Path, written: Path, bundle: Path, n: int, batch: int) -> tuple[dict, dict]:
    """The labels and probabilities the device wrote for the first n cells against the same annotator on the
    CPU: labels equal (ties within the device bound aside), probabilities within DEVICE_PROB_ATOL."""
    import anndata

    from sctab.annotation import load_annotator

    cpu = load_annotator(bundle, device="cpu")
    src = anndata.read_h5ad(h5ad, backed="r")
    labels, probs, pmax = [], [], []
    for start in range(0, n, batch):
        p, ok = cpu.predict_block(src[start:min(n, start + batch)].to_memory().X)[:2]
        frame = cpu.frame(p, ok)
        labels.append(frame["label"].to_numpy())
        pmax.append(frame["probability"].to_numpy())
        probs.append(p)
    obs = anndata.read_h5ad(written, backed="r").obs
    got_labels = obs["sctab_label"].to_numpy()[:n]
    got_p = obs["sctab_probability"].to_numpy(dtype=np.float64)[:n]
    differ, ties = label_mismatches(got_labels, np.concatenate(labels), np.concatenate(probs), DEVICE_PROB_ATOL)
    diff = np.abs(got_p - np.concatenate(pmax))
    return ({"labels other than the CPU's (ties aside)": bounded(differ, 0),
             "max |probability - probability_cpu|": bounded(float(np.nanmax(diff)) if n else 0.0, DEVICE_PROB_ATOL)},
            {"cells compared": n, "ties within the bound": ties})


register("device_loader", "Device: loader to the device (CSR batches, pinned copies, densified there)", 30_000,
         device_loader, baseline="same loader, dense batches on the CPU", device_row=True)
register("device_train_step", "Device: scTab training step, float32", 30_000, device_train_step("32"),
         baseline="same step on the CPU", device_row=True)
register("device_train_step_bf16", "Device: scTab training step, bf16-mixed", 30_000,
         device_train_step("bf16-mixed"), baseline="same step on the CPU", device_row=True)
register("device_train_e2e", "Device: train stage loop (sparse loader from disk, densified on the device, step)",
         30_000, device_train_e2e, baseline="same loop on the CPU", device_row=True)
register("device_inference", "Device: scTab inference per model, CSR batch", 150_000, device_inference,
         baseline="same on the CPU", device_row=True)
register("device_annotate", "Device: `sctab annotate` end to end, 5-member ensemble", None, device_annotate,
         baseline="same command on the CPU", device_row=True)
