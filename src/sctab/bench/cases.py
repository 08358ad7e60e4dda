"""The benchmark cases of `make bench`: each measures our fast path ("ours") and its baseline in the same run.

A case is a function `(part, cfg) -> dict` registered in `REGISTRY` under a name; `part` is "ours" or
"baseline" (each runs in its own subprocess, so each gets its own peak memory). It returns
`{"samples": [...], "unit": ..., "label": ..., "check": {...}}`: throughput samples (one per repeat), what
was measured, and, for "ours", the exactness check against the exact path. `Case.run=None` registers a
row whose benchmark does not exist yet (shown as "not run"): that is the hook for the `sctab annotate`
end-to-end row (`register("annotate_e2e", ...)`).
"""

from __future__ import annotations

import copy
import json
import multiprocessing
import os
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

from sctab.bench.synthetic import VERSION, gene_profile, make_store, synthetic_counts
from sctab.data.loaders import make_loader
from sctab.data.store import Store
from sctab.io import atomic_dir
from sctab.models.entmax import entmax15, entmax15_sort
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
    dense_batches: int = 6  # the dense-layout baseline reads this many batches per repeat (it is slow)
    annotate_cells: int = 100_000  # the raw-count h5ad of the annotate row
    annotate_baseline_cells: int = 8192
    annotate_repeats: int = 2  # each repeat annotates every cell (~2 min here)
    cache: str = "benchmarks/.cache"
    device: str = "cpu"  # where the device rows run (`--device`); the other rows always run on the CPU

    @classmethod
    def quick(cls, cache: str = "benchmarks/.cache") -> "Config":
        return cls(n_genes=2000, n_classes=20, n_cells=4096, batch_size=256, block_row_groups=2,
                   row_group_size=256, repeats=3, n_d=16, n_a=8, model_batches=2, memory_rows=2048,
                   dense_batches=4, annotate_cells=3000, annotate_baseline_cells=1000, cache=cache)

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


REGISTRY: dict[str, Case] = {}


def register(name: str, figure: str, target: Optional[float], run, baseline: str = "", note: str = "",
             device_row: bool = False) -> None:
    """Add (or replace) a row of the bench table."""
    REGISTRY[name] = Case(name, figure, target, run, baseline, note, device_row)


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
    """cells/s over one epoch (or `max_batches` batches) per repeat, a different shuffle each time; the
    epoch's first block (read before the first batch) is included."""
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
                                check={"same batch as dense layout": same, "max rows buffered": ld.max_rows_buffered})
        if x_format == "csr":
            ld = make_loader(store, "train", backend="stream", **kw)
            return _loader_rate(ld, cfg.repeats, cfg.dense_batches).result(unit="cells/s",
                                                                           label="dense layout (stream)")
        ld = make_loader(store, "train", backend="memory", rows=np.arange(cfg.memory_rows), **kw)
        _loader_rate(ld, 1)  # the first epoch loads the rows into memory: not timed
        return _loader_rate(ld, cfg.repeats).result(unit="cells/s", label=f"in-memory dense ({cfg.memory_rows} rows)")
    return run


def loader_merlin(part: str, cfg: Config) -> dict:
    """Run in .venv-merlin (the runner switches interpreter); baseline: our sparse loader."""
    store = _store(cfg)
    kw = dict(batch_size=cfg.batch_size, shuffle=True, seed=0, block_row_groups=cfg.block_row_groups)
    if part == "ours":
        ld = make_loader(store, "train", backend="merlin", **kw)
        return _loader_rate(ld, cfg.repeats, 2).result(unit="cells/s", label="merlin-dataloader (dense layout, CPU)")
    ld = make_loader(store, "train", backend="sparse", x_format="csr", **kw)
    return _loader_rate(ld, cfg.repeats).result(unit="cells/s", label="our sparse loader (csr)")


# ------------------------------------------------------------------------------------------- model
def _model_and_batches(cfg: Config, n_batches: int):
    """A TabNet of the paper's width whose BN statistics and entmax k have seen data, and real batches."""
    torch.manual_seed(0)
    store = _store(cfg)
    ld = make_loader(store, "train", batch_size=cfg.batch_size, shuffle=True, seed=1, backend="sparse",
                     x_format="csr", block_row_groups=cfg.block_row_groups, drop_last=True)
    batches = []
    for b in ld:
        batches.append(b)
        if len(batches) >= n_batches + 2:
            break
    model = TabNet(cfg.n_genes, cfg.n_classes, n_d=cfg.n_d, n_a=cfg.n_a)
    model.train()
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm1d)]
    for bn in bns:  # cumulative averages: running statistics of a converged run after two batches
        bn.momentum = None
    with torch.no_grad():
        for b in batches[n_batches:]:  # running BN statistics from other cells than the measured ones
            model(b.x.to_dense())
    for bn in bns:
        bn.momentum = 0.02
    return model, batches[:n_batches]


def _exactness(model, batches, inputs) -> dict:
    """Our probabilities vs the textbook model's (sort entmax) on the measured batches, and the scale of
    float32 rounding in this model: the textbook model in float32 vs in float64 on the first batch.

    An untrained TabNet with real BN statistics has logits of ~100 here, so reordering float32 sums alone
    moves probabilities by more than 1e-5; the check passes when ours is within 1e-5 of the textbook or
    no further from the float64 result than the textbook float32 computation itself."""
    model.set_fast(False)
    ref = [torch.softmax(model(b.x.to_dense())[0], -1) for b in batches]
    m64 = copy.deepcopy(model).double()
    p64 = torch.softmax(m64(batches[0].x.to_dense().double())[0], -1)
    del m64
    model.set_fast(True)
    got = [torch.softmax(model(x)[0], -1) for x in inputs]
    diff = float(max((g - r).abs().max() for g, r in zip(got, ref)))
    r32 = float((ref[0].double() - p64).abs().max())
    ours64 = float((got[0].double() - p64).abs().max())
    return {"max |p - p_textbook|": diff, "textbook f32 vs f64": r32, "ours vs f64": ours64,
            "exact (<= 1e-5, or within the textbook's f32 error)": diff <= 1e-5 or ours64 <= r32}


def sctab_inference(x_format: str):
    def run(part: str, cfg: Config) -> dict:
        model, batches = _model_and_batches(cfg, cfg.model_batches)
        model.eval()
        fast = part == "ours"
        inputs = [b.x if (fast and x_format == "csr") else b.x.to_dense() for b in batches]
        check = {}
        with torch.no_grad():
            if fast:
                check.update(_exactness(model, batches, inputs))
            model.set_fast(fast)
            model(inputs[0])  # warm-up (entmax k adapts to the support size)
            rates = Rates()
            for _ in range(cfg.repeats):
                rates.start()
                rates.stop(sum(int(model(x)[0].shape[0]) for x in inputs))
        label = (f"fast path, {x_format} input" if fast else "textbook (sort entmax, dense), dense input")
        return rates.result(unit="cells/s", label=label, check=check)
    return run


def sctab_train_step(part: str, cfg: Config) -> dict:
    model, batches = _model_and_batches(cfg, 1)
    x, y = batches[0].x.to_dense(), batches[0].y
    fast = part == "ours"
    check = {}
    if fast:  # same loss on a fixed batch, from the same state
        losses = []
        for f in (False, True):
            m = copy.deepcopy(model).set_fast(f)
            torch.manual_seed(5)
            logits, m_loss = m(x)
            losses.append(float(F.cross_entropy(logits, y) + m.lambda_sparse * m_loss))
        check["|loss - loss_ref|"] = abs(losses[0] - losses[1])
        check["same loss (<= 1e-5)"] = check["|loss - loss_ref|"] <= 1e-5
    model.set_fast(fast).train()
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
    label = "fast path (top-k entmax, sparse masked input)" if fast else "textbook (sort entmax, dense)"
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
            check["max |p - p_sort|"] = float((entmax15(scores) - entmax15_sort(scores)).abs().max())
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
         baseline="our sparse loader", note="needs .venv-merlin (`make merlin-env`)")
register("entmax", "1.5-entmax of the attention scores (batch x genes)", None, entmax_case,
         baseline="textbook full-sort entmax")
register("infer_dense", "scTab inference, dense batch", 3_700, sctab_inference("dense"),
         baseline="textbook scTab (sort entmax, dense)")
register("infer_csr", "scTab inference, sparse CSR batch", 3_700, sctab_inference("csr"),
         baseline="textbook scTab (sort entmax, dense)")
register("train_step", "scTab training step (fwd + bwd + AdamW)", 1_000, sctab_train_step,
         baseline="textbook scTab (sort entmax, dense)")
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


def _annotate_inputs(cfg: Config, n_cells: int, members: int = 5) -> tuple[Path, Path]:
    """A raw-count h5ad of n_cells (10x-like sparsity, all genes) and a 5-member ensemble bundle, cached."""
    import anndata

    from sctab.annotation.bundle import write_bundle

    root = Path(cfg.cache) / f"annotate-v{VERSION}-{cfg.n_genes}g-{cfg.n_classes}c-{n_cells}n-{members}m"
    h5ad, bundle = root / "cells.h5ad", root / "bundle"
    if (root / "done").exists():
        return h5ad, bundle
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
        model, _ = _model_and_batches(cfg, 1)  # BN statistics from real batches
        labels = store.classes
        folder = tmp / "models"
        for m in range(members):
            torch.manual_seed(m)
            member = TabNet(cfg.n_genes, cfg.n_classes, n_d=cfg.n_d, n_a=cfg.n_a)
            state = member.state_dict()
            for k, v in model.state_dict().items():  # shared BN statistics, own weights
                if "running_" in k or "num_batches" in k:
                    state[k] = v
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
            f"seed_{m}": "" for m in range(members)}}))
        ids = {lab: f"CL:9{i:06d}" for i, lab in enumerate(labels)}
        write_bundle(folder, tmp / "bundle", class_ids=ids, ontology=_FlatOntology())
        (tmp / "done").write_text("ok")
    return h5ad, bundle


def annotate_e2e(part: str, cfg: Config) -> dict:
    """`sctab annotate` (h5ad -> h5ad) with a 5-member ensemble. Ours: the fast TabNet path over every cell;
    baseline: the same command with the textbook model (sort entmax), on the first annotate_baseline_cells."""
    import anndata

    from sctab.annotation import annotate_file, load_annotator

    # build the inputs (once, cached) in another process, so their memory is not this part's peak RSS
    proc = multiprocessing.get_context("spawn").Process(target=_annotate_inputs, args=(cfg, cfg.annotate_cells))
    proc.start()
    proc.join()
    if proc.exitcode != 0:
        raise RuntimeError(f"building the annotate inputs failed (exit {proc.exitcode})")
    h5ad, bundle = _annotate_inputs(cfg, cfg.annotate_cells)
    ann = load_annotator(bundle, device="cpu")
    fast = part == "ours"
    for m in ann.bundle.members:
        m.module.set_fast(fast)
    src = h5ad
    if not fast:  # the textbook path is ~6x slower: time it on a slice
        src = Path(cfg.cache) / f"annotate-baseline-{cfg.annotate_baseline_cells}.h5ad"
        if not src.exists():
            anndata.read_h5ad(h5ad, backed="r")[: cfg.annotate_baseline_cells].to_memory().write_h5ad(src)
    rates = Rates()
    out = Path(cfg.cache) / f"annotated-{part}.h5ad"
    n = None
    for _ in range(cfg.annotate_repeats):
        rates.start()
        report = annotate_file(src, out, ann, batch_size=cfg.batch_size, progress=False)
        rates.stop(report.n_cells)
        n = report.n_cells
    out.unlink(missing_ok=True)
    label = (f"fast TabNet path, {n:,} cells" if fast else f"textbook TabNet (sort entmax), {n:,} cells")
    return rates.result(unit="cells/s", label=label, check={})


register("annotate_e2e", "`sctab annotate` end to end, 100k cells, 5-member ensemble", 1_000, annotate_e2e,
         baseline="same command, textbook model")


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


def device_loader(part: str, cfg: Config) -> dict:
    """Shuffled CSR batches from the sparse layout, copied to the device (pinned, non-blocking) and densified."""
    from sctab.models.device import model_input

    dev = _device(part, cfg)
    ld = make_loader(_store(cfg), "train", backend="sparse", x_format="csr", batch_size=cfg.batch_size, shuffle=True,
                     seed=0, block_row_groups=cfg.block_row_groups)
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
    return rates.result(unit="cells/s", label=f"sparse loader -> dense batches on {_where(dev)}")


def device_train_step(precision: str):
    def run(part: str, cfg: Config) -> dict:
        from sctab.models.device import autocast, model_input

        dev = _device(part, cfg)
        model, batches = _model_and_batches(cfg, 1)
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
        return rates.result(unit="cells/s", label=f"fast path, {precision}, on {_where(dev)}")
    return run


def device_inference(part: str, cfg: Config) -> dict:
    """The fast path on CSR batches copied to the device (what evaluation and annotation run)."""
    from sctab.models.device import model_input

    dev = _device(part, cfg)
    model, batches = _model_and_batches(cfg, cfg.model_batches)
    model.to(dev).eval()
    check = {}
    with torch.no_grad():
        if part == "ours" and dev.type != "cpu":  # the device computes what the CPU does
            cpu_model = copy.deepcopy(model).cpu()
            got = torch.softmax(model(model_input(batches[0].x, dev, dense=False))[0], -1).cpu()
            check["max |p_device - p_cpu|"] = float((got - torch.softmax(cpu_model(batches[0].x)[0], -1)).abs().max())
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
    proc = multiprocessing.get_context("spawn").Process(target=_annotate_inputs, args=(cfg, cfg.annotate_cells))
    proc.start()
    proc.join()
    if proc.exitcode != 0:
        raise RuntimeError(f"building the annotate inputs failed (exit {proc.exitcode})")
    h5ad, bundle = _annotate_inputs(cfg, cfg.annotate_cells)
    ann = load_annotator(bundle, device=str(dev))
    out = Path(cfg.cache) / f"annotated-device-{part}.h5ad"
    rates, n = Rates(), 0
    for _ in range(cfg.annotate_repeats):
        rates.start()
        n = annotate_file(h5ad, out, ann, batch_size=cfg.batch_size, progress=False).n_cells
        rates.stop(n)
    out.unlink(missing_ok=True)
    return rates.result(unit="cells/s", label=f"fast TabNet path on {_where(dev)}, {n:,} cells", check={})


register("device_loader", "Device: loader to the device (CSR batches, pinned copies, densified there)", 30_000,
         device_loader, baseline="same loader, dense batches on the CPU", device_row=True)
register("device_train_step", "Device: scTab training step, float32", 30_000, device_train_step("32"),
         baseline="same step on the CPU", device_row=True)
register("device_train_step_bf16", "Device: scTab training step, bf16-mixed", 30_000,
         device_train_step("bf16-mixed"), baseline="same step on the CPU", device_row=True)
register("device_inference", "Device: scTab inference per model, CSR batch", 150_000, device_inference,
         baseline="same on the CPU", device_row=True)
register("device_annotate", "Device: `sctab annotate` end to end, 5-member ensemble", None, device_annotate,
         baseline="same command on the CPU", device_row=True)
