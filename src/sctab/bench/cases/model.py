"""The model rows: scTab inference and the training step against the reference TabNet, the train stage's loop
against the isolated step, and top-k entmax against the full sort.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from sctab.bench.cases.registry import Rates, register
from sctab.bench.checks import bounded
from sctab.bench.exactness import model_exactness
from sctab.bench.fixtures import Config, e2e_batches, model_and_batches
from sctab.bench.roofline import count_work
from sctab.models.entmax import entmax15, entmax15_sort
from sctab.models.reference_tabnet import ReferenceTabNet


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
        model, batches = model_and_batches(cfg, cfg.model_batches)
        model.eval()
        fast = part == "ours"
        inputs = [b.x if (fast and x_format == "csr") else b.x.to_dense() for b in batches]
        check, info = {}, {}
        with torch.no_grad():
            if fast:
                res = model_exactness(model, batches, inputs)
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
    model, batches = model_and_batches(cfg, 1)
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


def train_end_to_end(part: str, cfg: Config) -> dict:
    """The train stage's inner loop (``sctab.train.loop.train_step``) fed by its real loader, against the same
    steps on the same batches read beforehand (the isolated step). Ours: the sparse loader (CSR batches, its
    read-ahead threads) and the steps, timed together; baseline: the loader's batches for that epoch read
    first, then only the steps timed. Both start from the trained weights, with the training loop's AdamW."""
    from sctab.train.loop import train_step

    model, _ = model_and_batches(cfg, 1)
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
    model, batches = model_and_batches(cfg, 1)
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
