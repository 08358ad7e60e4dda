"""The training loop every model shares (paper, Methods "Model details"), runner-agnostic.

Class-weighted cross entropy (+ lambda_sparse x the mask entropy for scTab), AdamW, StepLR stepped once
per epoch, online augmentation on training batches only, and model selection on the validation
ontology-corrected macro F1. The loop talks to its runner through a small ``Session`` (Ray Train's
workers in production, a plain in-process one for quick local runs), so the same code is tested either way.
"""

from __future__ import annotations

import contextlib
import copy
import math
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from sctab.allocator import keep_freed_memory
from sctab.data.augment import Augmenter, load_augmentations
from sctab.data.loaders import make_loader
from sctab.data.store import Store
from sctab.data.subsets import train_rows
from sctab.evaluate.metrics import f1_from_confusion
from sctab.io import atomic_dir
from sctab.models import build_model, model_outputs, takes_sparse
from sctab.models.device import autocast, model_input, resolve_device
from sctab.train.spec import TrainSpec

STATE_FILE = "state.pt"
BEST_FILE = "best_model.pt"


class TrainingError(RuntimeError):
    """Training cannot go on (bad data, diverged loss); the message says where."""


class Session(Protocol):
    rank: int
    world_size: int
    device: torch.device

    def load_state(self) -> tuple[dict, dict] | None: ...
    def wrap(self, model: torch.nn.Module) -> torch.nn.Module: ...
    def all_reduce(self, t: torch.Tensor) -> torch.Tensor: ...
    def report(self, metrics: dict, checkpoint_dir: Path | None) -> None: ...


@dataclass
class EpochLogger:
    """Called on rank 0 after each reported epoch (MLflow in production)."""
    log_epoch: Callable[[dict, int], None] = lambda metrics, epoch: None
    log_resume: Callable[[int], None] = lambda epoch: None


def _check_labels(y: torch.Tensor, n_classes: int, where: str) -> None:
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= n_classes):
        raise TrainingError(f"{where}: cell_type code outside the lookup's {n_classes} classes "
                            f"(min {int(y.min())}, max {int(y.max())})")


@torch.no_grad()
def evaluate_loader(model: torch.nn.Module, loader, class_weights: torch.Tensor, child_matrix: torch.Tensor,
                    device: torch.device, all_reduce: Callable[[torch.Tensor], torch.Tensor] = lambda t: t) -> dict:
    """Weighted CE loss and ontology-corrected macro F1 over a (sharded) split, summed across workers.

    In float32 whatever the training precision (the score a model is selected on is the model's own), with
    the sums kept on the device: one synchronisation at the end, none per batch."""
    n_classes = child_matrix.shape[0]
    was_training = model.training
    model.eval()
    dense = not takes_sparse(model)
    cm = torch.zeros(n_classes * n_classes, dtype=torch.float64, device=device)
    sums = torch.zeros(2, dtype=torch.float64, device=device)  # weighted loss sum, weight sum
    rows = 0
    for batch in loader:
        _check_labels(batch.y, n_classes, "validation split")  # on the host copy: no device round trip
        x, y = model_input(batch.x, device, dense), batch.y.to(device, non_blocking=True)
        logits, _ = model_outputs(model, x)
        logits = logits.float()
        loss = F.cross_entropy(logits, y, weight=class_weights, reduction="sum")
        pred = logits.argmax(dim=1)
        pred = torch.where(child_matrix[y, pred] > 0, y, pred)  # subtype of the truth counts as right
        cm += torch.bincount(y * n_classes + pred, minlength=n_classes * n_classes).to(cm.dtype)
        sums += torch.stack([loss.double(), class_weights[y].sum().double()])
        rows += len(batch)
    model.train(was_training)
    sums = torch.cat([sums, torch.tensor([float(rows)], dtype=torch.float64, device=device)])
    cm, sums = all_reduce(cm), all_reduce(sums)
    f1, _, _ = f1_from_confusion(cm.reshape(n_classes, n_classes).cpu().numpy(), average_over="union")
    return {"loss": float(sums[0] / sums[1]) if sums[1] > 0 else float("nan"), "f1_macro": f1, "rows": int(sums[2])}


def _join(model: torch.nn.Module, world_size: int):
    """DDP over uneven shards: the rank with fewer batches shadows the others' all-reduces (no data dropped)."""
    if world_size > 1 and isinstance(model, torch.nn.parallel.DistributedDataParallel):
        from torch.distributed.algorithms.join import Join

        return Join([model])
    return contextlib.nullcontext()


def train_step(model: torch.nn.Module, batch, opt: torch.optim.Optimizer, device: torch.device, *,
               class_weights: torch.Tensor | None = None, lambda_sparse: float = 0.0, precision: str = "32",
               augmenter=None, generator: torch.Generator | None = None) -> torch.Tensor:
    """One optimiser step on one loader batch (to the device, augmented, forward, weighted CE plus the mask
    entropy term, backward, step); the detached loss, left on the device (no synchronisation).

    The training loop and the bench's end-to-end training row run this same function."""
    x, y = model_input(batch.x, device, dense=True), batch.y.to(device, non_blocking=True)
    if augmenter is not None:
        x = augmenter(x, generator=generator)
    with autocast(device, precision):  # bf16-mixed: bf16 matmuls; entmax stays float32
        logits, aux = model_outputs(model, x)
    loss = F.cross_entropy(logits.float(), y, weight=class_weights)  # losses in float32
    if aux is not None and lambda_sparse:
        loss = loss + lambda_sparse * aux.float()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.detach()


def run_training(spec: TrainSpec, session: Session, logger: EpochLogger | None = None) -> dict:
    """Train ``spec`` in this worker; return the final metrics (identical on every rank)."""
    logger = logger or EpochLogger()
    keep_freed_memory()  # every batch's cells x genes buffers reuse freed memory (sctab.allocator)
    rank, world, device = session.rank, session.world_size, session.device
    torch.manual_seed(spec.seed)
    np.random.seed(spec.seed)
    store = Store(spec.store)
    n_genes, n_classes = store.n_genes, store.n_classes
    model = build_model(spec.model, n_genes, n_classes, **spec.arch).to(device)
    lambda_sparse = float(getattr(model, "lambda_sparse", 0.0))
    class_weights = torch.as_tensor(store.class_weights(), dtype=torch.float32, device=device)
    child = torch.as_tensor(store.child_matrix(), dtype=torch.float32, device=device)
    opt = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=spec.weight_decay)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=spec.lr_gamma)

    start_epoch, history, step = 0, [], 0
    best = {"f1": -1.0, "epoch": -1, "loss": float("nan")}
    best_state = None
    restored = session.load_state()
    if restored is not None:
        state, best_state = restored
        try:
            model.load_state_dict(state["model"])
        except RuntimeError as e:
            raise TrainingError(f"the checkpoint to resume from does not fit the {spec.model} model built for store "
                                f"{spec.store} ({n_genes} genes, {n_classes} classes): {str(e).splitlines()[0]} "
                                f"{str(e).splitlines()[1] if len(str(e).splitlines()) > 1 else ''}") from e
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        start_epoch, history, best = state["epoch"] + 1, list(state["history"]), dict(state["best"])
        step = int(state.get("step", 0))
        if rank == 0:
            logger.log_resume(start_epoch)
    train_model = session.wrap(model)

    rows = train_rows(store, spec.subset)
    # the sparse layout travels as CSR batches (~10x fewer bytes to copy to a GPU), densified on the device
    x_format = "csr" if spec.loader == "sparse" else "dense"
    train_loader = make_loader(store, "train", batch_size=spec.batch_size, backend=spec.loader, shuffle=True,
                               seed=spec.seed, rank=rank, world_size=world, block_row_groups=spec.block_row_groups,
                               rows=rows, x_format=x_format)
    val_loader = make_loader(store, "val", batch_size=spec.eval_batch_size, backend=spec.loader, shuffle=False,
                             rank=rank, world_size=world, block_row_groups=spec.block_row_groups, x_format=x_format)
    augmenter = None
    if spec.augment:
        augmenter = Augmenter(load_augmentations(spec.augmentations, n_genes), clip=spec.augment_clip).to(device)

    metrics: dict = history[-1] if history else {}
    n_train = len(rows) if rows is not None else store.split("train").n_rows
    n_epochs = spec.epochs_for(n_train, world)  # a step budget (max_steps) becomes epochs over these rows
    min_steps = spec.min_steps_for(n_train, world)
    if rank == 0 and spec.max_steps is not None and start_epoch == 0:
        budget = n_epochs * spec.steps_per_epoch(n_train, world)  # the steps these epochs take
        capped = budget < spec.max_steps
        print(f"{spec.model}: budget of {spec.max_steps:,} optimiser steps = {n_epochs} epochs over "
              f"{n_train:,} train cells (batch {spec.batch_size})"
              + (f"; capped at max_epochs {spec.max_epochs} ({budget:,} steps, early stopping from step "
                 f"{min_steps:,})" if capped else ""), flush=True)
    for epoch in range(start_epoch, n_epochs):
        train_loader.set_epoch(epoch)
        gen = torch.Generator(device=device).manual_seed(spec.seed * 1_000_003 + epoch * 1_009 + rank)
        model.train()
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)  # sum of loss x rows, on the device
        n_rows = n_batches = 0
        t0 = time.perf_counter()
        epoch_lr = opt.param_groups[0]["lr"]  # StepLR's; a warm-up scales it per step and gives it back after
        with _join(train_model, world):
            for batch in train_loader:
                _check_labels(batch.y, n_classes, "training split")  # on the host copy: no device round trip
                if step < spec.warmup_steps:
                    for g in opt.param_groups:
                        g["lr"] = epoch_lr * (step + 1) / spec.warmup_steps
                elif spec.warmup_steps and step == spec.warmup_steps:
                    for g in opt.param_groups:
                        g["lr"] = epoch_lr
                step += 1
                loss = train_step(train_model, batch, opt, device, class_weights=class_weights,
                                  lambda_sparse=lambda_sparse, precision=spec.precision, augmenter=augmenter,
                                  generator=gen)
                loss_sum += loss.double() * len(batch)
                n_rows, n_batches = n_rows + len(batch), n_batches + 1
        lr = opt.param_groups[0]["lr"]
        for g in opt.param_groups:  # StepLR decays from its own value, not a warm-up's
            g["lr"] = epoch_lr
        sched.step()
        # the epoch's one synchronisation: the device's running sum joins the host's counts
        sums = session.all_reduce(torch.stack([loss_sum, loss_sum.new_tensor(float(n_rows)),
                                               loss_sum.new_tensor(float(n_batches))]))
        train_loss = float(sums[0] / sums[1]) if sums[1] > 0 else float("nan")
        train_seconds = time.perf_counter() - t0  # after the synchronisation: the device's work included
        if not math.isfinite(train_loss):
            raise TrainingError(f"training loss became {train_loss} in epoch {epoch} (lr {lr}); "
                                f"lower the learning rate")
        val = evaluate_loader(model, val_loader, class_weights, child, device, session.all_reduce)
        # the signal model selection and early stopping act on: the raw F1, or its moving average over epochs
        prev = history[-1].get("val_f1_smoothed", history[-1]["val_f1_macro"]) if history else None
        a = spec.val_smoothing
        smoothed = val["f1_macro"] if prev is None or not a else a * prev + (1 - a) * val["f1_macro"]
        if smoothed > best["f1"]:
            best = {"f1": smoothed, "epoch": epoch, "loss": val["loss"]}
            best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        metrics = {
            "epoch": epoch, "train_loss": train_loss, "val_loss": val["loss"], "val_f1_macro": val["f1_macro"],
            "lr": lr, "train_cells_per_s": float(sums[1]) / max(train_seconds, 1e-9),
            "train_rows": int(sums[1]), "val_rows": val["rows"], "epoch_seconds": time.perf_counter() - t0,
            "best_val_f1_macro": best["f1"], "best_epoch": best["epoch"], "val_f1_smoothed": smoothed, "step": step,
        }
        history.append(metrics)
        stop = spec.patience is not None and epoch - best["epoch"] >= spec.patience and step >= min_steps
        with tempfile.TemporaryDirectory(prefix="sctab-ckpt-") as tmp:
            ckpt = None
            if rank == 0:
                ckpt = Path(tmp)
                torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(),
                            "scheduler": sched.state_dict(), "epoch": epoch, "history": history, "best": best,
                            "step": step},
                           ckpt / STATE_FILE)
                torch.save(best_state, ckpt / BEST_FILE)
            if rank == 0:  # before the report: an epoch that reached a checkpoint always has its metrics logged
                logger.log_epoch(metrics, epoch)
            session.report(dict(metrics, stopped_early=stop), ckpt)
        if stop:
            break
    return {**metrics, "history": history}


def load_checkpoint_dir(path: str | Path) -> tuple[dict, dict]:
    """(training state, best model weights) from a checkpoint folder, without unpickling code."""
    path = Path(path)
    for f in (STATE_FILE, BEST_FILE):
        if not (path / f).exists():
            raise TrainingError(f"checkpoint {path} lacks {f}")
    state = torch.load(path / STATE_FILE, map_location="cpu", weights_only=True)
    best = torch.load(path / BEST_FILE, map_location="cpu", weights_only=True)
    return state, best


class LocalSession:
    """One process, no Ray: for unit tests and quick experiments. Keeps the last checkpoint in a folder."""

    rank, world_size = 0, 1

    def __init__(self, checkpoint_dir: str | Path, device: str | torch.device | None = None):
        self.checkpoint_dir = Path(checkpoint_dir)
        self.device = resolve_device(device or "auto")
        self.reports: list[dict] = []

    def load_state(self):
        if (self.checkpoint_dir / STATE_FILE).exists():
            return load_checkpoint_dir(self.checkpoint_dir)
        return None

    def wrap(self, model):
        return model

    def all_reduce(self, t):
        return t

    def report(self, metrics, checkpoint_dir):
        self.reports.append(copy.deepcopy(metrics))
        if checkpoint_dir is not None:
            with atomic_dir(self.checkpoint_dir) as tmp:
                for f in Path(checkpoint_dir).iterdir():
                    shutil.copy2(f, tmp / f.name)
