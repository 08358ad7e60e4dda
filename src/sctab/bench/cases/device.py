"""The device rows (`--device cuda`, or cpu to smoke them): ours on Config.device, the baseline the same work on
the CPU; loader to the device, training step (float32, bf16-mixed), the train loop, inference, annotate.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from sctab.bench.cases.registry import Rates, register
from sctab.bench.checks import bounded
from sctab.bench.exactness import DEVICE_BOUNDS, DEVICE_PROB_ATOL, label_mismatches, one_thread, step_agreement
from sctab.bench.fixtures import (
    Config,
    annotate_inputs,
    bench_store,
    e2e_batches,
    in_spawned_process,
    model_and_batches,
)
from sctab.data.loaders import make_loader


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
    ld = make_loader(bench_store(cfg), "train", backend="sparse", x_format="csr", **kw)
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
        res = device_batches_equal(ld, dev, make_loader(bench_store(cfg), "train", backend="sparse",
                                                        x_format="dense", **kw))
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


def device_train_step(precision: str):
    def run(part: str, cfg: Config) -> dict:
        from sctab.models.device import autocast, model_input

        dev = _device(part, cfg)
        model, batches = model_and_batches(cfg, 1)
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
    model, _ = model_and_batches(cfg, 1)
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
    model, batches = model_and_batches(cfg, cfg.model_batches)
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
    in_spawned_process(annotate_inputs, cfg, cfg.annotate_cells)
    h5ad, bundle = annotate_inputs(cfg, cfg.annotate_cells)
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
