"""The roofline's work counter: products' FLOPs and bytes counted from the ops that run."""

import pytest
import torch

from sctab.bench.roofline import Peaks, WorkCounter, count_work, roofline_rows


def test_a_dense_linear_counts_2mkn_flops_and_its_tensors_bytes():
    x, w, b = torch.randn(32, 100), torch.randn(7, 100), torch.randn(7)
    with WorkCounter() as c:
        torch.nn.functional.linear(x, w, b)
    assert c.flops == 2 * 32 * 100 * 7
    # addmm reads bias, x and w, writes the 32 x 7 output: the transpose of w is a view and moves nothing
    assert c.bytes == 4 * (7 + 32 * 100 + 100 * 7 + 32 * 7)


def test_a_sparse_csr_operand_costs_its_non_zeros_only():
    x = torch.zeros(64, 500)
    x[torch.arange(64), torch.arange(64) * 7 % 500] = 1.0
    x[3, 11] = 2.0
    xs, w = x.to_sparse_csr(), torch.randn(500, 16)
    with WorkCounter() as c:
        torch.sparse.mm(xs, w)
    assert c.flops == 2 * 65 * 16
    dense = count_work(lambda: x @ w, 64)
    assert dense["flop_per_cell"] == 2 * 500 * 16
    assert dense["bytes_per_cell"] > 0
    assert dense["intensity"] == pytest.approx(dense["flop_per_cell"] / dense["bytes_per_cell"])


def test_backward_is_counted_too():
    x, w = torch.randn(8, 20), torch.randn(20, 5, requires_grad=True)
    fwd = count_work(lambda: x @ w, 8)["flop_per_cell"]
    both = count_work(lambda: (x @ w).sum().backward(), 8)["flop_per_cell"]
    assert fwd == 2 * 20 * 5 and both == 2 * fwd  # the gradient of w is one more product of the same size


def test_attainable_is_the_lower_ceiling_and_the_fraction_follows():
    peaks = Peaks(gemm_flops=100e9, bandwidth=10e9, gemm_n=8, triad_mib=1, threads=1, repeats=1)
    assert peaks.attainable(2.0) == 20e9 and peaks.attainable(50.0) == 100e9
    row = {"name": "r", "figure": "R", "status": "ok", "median": 1000.0,
           "ours": {"work": {"flop_per_cell": 1e6, "bytes_per_cell": 5e5, "intensity": 2.0}}}
    skipped = {"name": "s", "figure": "S", "status": "not run"}
    (out,) = roofline_rows([row, skipped], peaks)
    assert out["bound"] == "memory" and out["fraction"] == pytest.approx(1e9 / 20e9)


def test_the_higher_of_two_measurements_is_the_ceiling():
    from sctab.bench.roofline import higher

    before = Peaks(400e9, 30e9, 8, 1, 2, 7, when="before the rows")
    after = Peaks(70e9, 35e9, 8, 1, 2, 7, when="after the rows")  # load pulled the GEMM down
    best = higher(before, after)
    assert best.gemm_flops == 400e9 and best.bandwidth == 35e9
    assert "before the rows: 400 GFLOP/s" in best.when and "after the rows: 70 GFLOP/s" in best.when
