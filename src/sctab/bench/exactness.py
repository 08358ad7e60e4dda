"""The bench's pass/fail criteria for model outputs: ours against the reference TabNet in float32 and float64
(`exactness`, `tie_bound`, on one thread), label ties within rounding, and the device rows' agreement bounds.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch

from sctab.bench.checks import bounded
from sctab.models.reference_tabnet import ReferenceTabNet

#: the exactness criterion of every model row: ours may be at most this many times further from the
#: float64 result than the reference float32 model is, and must pick the reference's class for every cell
EXACT_FACTOR = 4.0


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


def model_exactness(model, batches, inputs) -> dict:
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


#: the device rows' bounds, from docs/gpu.md (what tests/models/test_gpu.py asserts of CUDA against the CPU):
#: float32 within 1e-4 abs + 1e-4 rel (forward), gradients within 1e-4 abs + 1e-3 rel; bf16-mixed within
#: 2e-2 abs + 2e-2 rel (forward) and a relative difference of the gradient vector below 2e-2
DEVICE_BOUNDS = {"32": {"loss": (1e-4, 1e-4), "grad": (1e-4, 1e-3)},
                 "bf16-mixed": {"loss": (2e-2, 2e-2), "grad_norm": 2e-2}}
#: the device's probabilities within this of the CPU's on the same weights and cells (docs/gpu.md)
DEVICE_PROB_ATOL = 1e-4


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
