"""What the bench's cases run on, built once and cached: the synthetic store, the weights of a short
training run (the model rows' and the annotate ensemble's members) and the annotate row's .h5ad and bundle.
"""

from __future__ import annotations

import copy
import multiprocessing
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
import torch.nn.functional as F

from sctab.bench.synthetic import VERSION, gene_profile, make_store, synthetic_counts
from sctab.data.loaders import make_loader
from sctab.data.store import Store
from sctab.io import atomic_dir
from sctab.models.tabnet import TabNet

# anndata and sctab.annotation are imported where the annotate row needs them only: .venv-merlin, which imports
# every case module for the merlin row, lacks them, and every other row's subprocess would carry them in its
# peak RSS.


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


def bench_store(cfg: Config):
    return Store(make_store(cfg.store_path, cfg.n_cells, cfg.n_genes, cfg.n_classes,
                            row_group_size=cfg.row_group_size))


# ------------------------------------------------------------------------------------------- model
#: bump when the short training run below changes: cached weights are keyed by it
WEIGHTS_VERSION = 1


def weights_path(cfg: Config) -> Path:
    return Path(cfg.cache) / (f"weights-v{VERSION}.{WEIGHTS_VERSION}-{cfg.n_genes}g-{cfg.n_classes}c-"
                              f"{cfg.n_cells}n-d{cfg.n_d}a{cfg.n_a}-{cfg.train_steps}s-{cfg.members}m.pt")


def _train_weights(cfg: Config) -> None:
    """A short training run on the bench store (fast path, AdamW at the tiny profile's lr and the paper's
    weight decay), so masks have the support sizes of a model in use, not of random weights. Member 0 is
    that run; members 1.. continue it for `member_steps` steps each on their own shuffle (distinct weights,
    same regime). Saved as a list of state dicts at weights_path.

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
    store = bench_store(cfg)
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
    path = weights_path(cfg)
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


def in_spawned_process(fn, *args) -> None:
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
    if not weights_path(cfg).exists():
        in_spawned_process(_train_weights, cfg)
    return torch.load(weights_path(cfg), weights_only=True)


def model_and_batches(cfg: Config, n_batches: int, member: int = 0):
    """Trained TabNet `member` (eval BN statistics from its training run) and n_batches real batches."""
    states = trained_states(cfg)
    torch.manual_seed(0)
    store = bench_store(cfg)
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


def e2e_batches(cfg: Config):
    """The train stage's loader over the bench store (sparse layout, CSR batches, read-ahead) and a generator of
    an epoch's first ``cfg.e2e_batches`` batches: what both training-loop rows (CPU and device) feed their steps."""
    ld = make_loader(bench_store(cfg), "train", batch_size=cfg.batch_size, shuffle=True, seed=3, backend="sparse",
                     x_format="csr", block_row_groups=cfg.block_row_groups, drop_last=True)

    def batches(epoch: int):
        ld.set_epoch(epoch)
        for i, b in enumerate(ld):
            if i >= cfg.e2e_batches:
                break
            yield b
    return batches
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


def annotate_root(cfg: Config, n_cells: int) -> Path:
    return Path(cfg.cache) / (f"annotate-v{VERSION}.{WEIGHTS_VERSION}-{cfg.n_genes}g-{cfg.n_classes}c-{n_cells}n-"
                              f"{cfg.members}m-{cfg.train_steps}s")


def annotate_inputs(cfg: Config, n_cells: int) -> tuple[Path, Path]:
    """A raw-count h5ad of n_cells (10x-like sparsity, all genes) and a bundle of the trained members, cached."""
    import anndata

    from sctab.annotation.bundle import write_bundle
    from sctab.models import FeatureSpace, TorchClassifier, save, save_ensemble_summary

    root = annotate_root(cfg, n_cells)
    h5ad, bundle = root / "cells.h5ad", root / "bundle"
    if (root / "done").exists():
        return h5ad, bundle
    states = trained_states(cfg)
    store = bench_store(cfg)
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
        arch = {"n_d": cfg.n_d, "n_a": cfg.n_a}
        for m, state in enumerate(states):  # through the one writer of model folders, as the train stage does
            module = TabNet(cfg.n_genes, cfg.n_classes, **arch)
            module.load_state_dict(state)
            clf = TorchClassifier(kind="sctab", module=module.eval(), space=FeatureSpace.of(store), config=arch)
            save(folder / f"seed_{m}", clf, target_sum=10000.0, meta={"run_id": "", "seed": m})
        save_ensemble_summary(folder, {"model": "sctab", "members": {f"seed_{m}": "" for m in range(len(states))}})
        ids = {lab: f"CL:9{i:06d}" for i, lab in enumerate(labels)}
        write_bundle(folder, tmp / "bundle", class_ids=ids, ontology=_FlatOntology())
        (tmp / "done").write_text("ok")
    return h5ad, bundle
