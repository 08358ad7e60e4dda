"""The training loader rows: our sparse loader against the dense layout and an in-memory loader, merlin-dataloader,
and the loader anchors (scDataset, tiledbsoma-ml, annbatch) on the same cells.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Optional

import numpy as np

from sctab.bench.cases.registry import Rates, register
from sctab.bench.checks import bounded
from sctab.bench.fixtures import Config, bench_store
from sctab.data.group_readers import GroupReader
from sctab.data.loaders import SparseStreamLoader, StreamLoader, make_loader


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
            reader = self._local.reader = GroupReader(self.store, self.split_name, self.columns)
        buf = reader.empty(block.n_rows)
        at = 0
        for g, sel in zip(block.groups, block.select):
            at += reader.read_into(g, sel, buf, at)
        return buf, None, (1 + self.read_ahead) * block.n_rows


# ------------------------------------------------------------------------------------------- loaders
def loader_sparse(x_format: str):
    def run(part: str, cfg: Config) -> dict:
        store = bench_store(cfg)
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
    store = bench_store(cfg)
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

        store = bench_store(cfg)
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
