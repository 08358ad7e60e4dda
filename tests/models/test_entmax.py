"""Exact 1.5-entmax: values and gradients against the reference `entmax` package."""

from __future__ import annotations

import zlib

import pytest
import torch
from entmax import entmax15 as ref_entmax15
from entmax import sparsemax as ref_sparsemax

from sctab.models.entmax import (
    HINT_QUANTILE,
    Entmax15,
    SolveInfo,
    entmax15,
    entmax15_factored,
    entmax15_solve_info,
    entmax15_sort,
    sparsemax,
    support_entropy,
)
from sctab.models.entmax_solvers import PREFILTER_MIN_N

pytestmark = pytest.mark.usefixtures("torch_one_thread")


VALUE_ATOL = 1e-6
GRAD_ATOL = 1e-5


def _inputs(kind: str, batch: int, dim: int, gen: torch.Generator) -> torch.Tensor:
    if kind == "normal":
        return torch.randn(batch, dim, generator=gen)
    if kind == "normal3":  # like a TabNet attention pre-activation
        return torch.randn(batch, dim, generator=gen) * 3
    if kind == "sparse":  # mostly very negative / zero, a few large values
        x = torch.where(torch.rand(batch, dim, generator=gen) < 0.5, -50.0, 0.0)
        n_big = max(1, dim // 100)
        cols = torch.randint(0, dim, (batch, n_big), generator=gen)
        return x.scatter(1, cols, 5 + torch.rand(batch, n_big, generator=gen))
    if kind == "ties":
        return torch.randint(-3, 3, (batch, dim), generator=gen).float() / 2
    if kind == "equal":
        return torch.full((batch, dim), 0.7)
    if kind == "huge":  # +-1e4 magnitudes
        x = torch.randn(batch, dim, generator=gen) * 1e4
        x[:, 0] = 1e4
        x[:, -1] = -1e4
        return x
    raise AssertionError(kind)


KINDS = ["normal", "normal3", "sparse", "ties", "equal", "huge"]


def _check_against_reference(fn, x: torch.Tensor, ref=ref_entmax15, seed: int = 0):
    x = x.clone().requires_grad_(True)
    g = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))
    y_ref = ref(x, dim=-1)
    (gx_ref,) = torch.autograd.grad(y_ref, x, g)
    y = fn(x)
    (gx,) = torch.autograd.grad(y, x, g)
    assert y.shape == x.shape and y.dtype == x.dtype
    torch.testing.assert_close(y, y_ref, atol=VALUE_ATOL, rtol=0)
    torch.testing.assert_close(gx, gx_ref, atol=GRAD_ATOL, rtol=1e-5)
    assert (y >= 0).all()
    torch.testing.assert_close(y.sum(-1), torch.ones(x.shape[:-1]), atol=1e-5, rtol=0)
    return y


@pytest.mark.parametrize("dim", [1, 2, 7, 19331])
@pytest.mark.parametrize("batch", [1, 64])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("fn_name", ["entmax15", "entmax15_sort"])
def test_matches_reference(fn_name, kind, batch, dim):
    if dim == 19331 and batch == 64 and kind not in ("normal3", "sparse", "equal"):
        batch = 8  # keep the suite fast; the 64-row wide cases are covered by the kinds above
    gen = torch.Generator().manual_seed(zlib.crc32(f"{kind}-{batch}-{dim}".encode()))
    x = _inputs(kind, batch, dim, gen)
    fn = {"entmax15": entmax15, "entmax15_sort": entmax15_sort}[fn_name]
    _check_against_reference(fn, x)


def test_exact_closed_forms():
    # all-equal row -> uniform; one dominant entry -> one-hot; two entries -> known tau
    assert torch.equal(entmax15(torch.zeros(1, 19331)), torch.full((1, 19331), 1 / 19331))
    x = torch.tensor([[0.0, -3.0, -10.0]])
    assert torch.equal(entmax15(x), torch.tensor([[1.0, 0.0, 0.0]]))
    # p = ((z - tau)^2) with z = x/2 = [0.25, 0]: tau solves (0.25-t)^2 + t^2 = 1
    x = torch.tensor([[0.5, 0.0]], dtype=torch.float64)
    tau = (0.25 - (2 - 0.25**2) ** 0.5) / 2
    expected = torch.tensor([[(0.25 - tau) ** 2, tau**2]], dtype=torch.float64)
    torch.testing.assert_close(entmax15(x), expected, atol=1e-12, rtol=0)


def test_topk_path_and_fallback_are_both_taken():
    gen = torch.Generator().manual_seed(1)
    n = 19331
    narrow = torch.randn(3, n, generator=gen) * 3  # support of a few genes
    wide = torch.randn(2, n, generator=gen) * 0.05  # support of thousands of genes
    mid = torch.randn(1, n, generator=gen) * 0.5  # support ~100: 2nd top-k attempt
    x = torch.cat([narrow, wide, mid])
    info = entmax15_solve_info(x, k=64, prefilter=False)
    assert info.ks == [64, 512] and not info.prefiltered
    assert info.path.tolist() == [0, 0, 0, -1, -1, 1]
    assert info.fallback_rows.tolist() == [3, 4]
    assert info.max_support > 512
    # the mixed batch (scatter into row subsets) is still exact, values and grads
    _check_against_reference(lambda t: entmax15(t, k=64, prefilter=False), x)
    # a k that is too small for every row still gives the exact answer
    _check_against_reference(lambda t: entmax15(t, k=1, prefilter=False), narrow)


@pytest.mark.parametrize("kind", ["entmax15", "sparsemax"])
def test_bound_attempt_solves_narrow_rows_and_leaves_wide_ones(kind):
    """The bound from 64 chunk maxima (attempt 0) solves the rows whose support is small, padded to the
    widest of them with zeros of their own row; rows with too many candidates go on to top-k and the sort.
    Its output is the top-k path's bit for bit (same sorted prefix), values and gradients."""
    gen = torch.Generator().manual_seed(1)
    n = 19331
    narrow = torch.randn(3, n, generator=gen) * 3
    wide = torch.randn(2, n, generator=gen) * (0.05 if kind == "entmax15" else 0.0005)  # supports of thousands
    mid = torch.randn(1, n, generator=gen) * 0.5
    x = torch.cat([narrow, wide, mid])
    fn = entmax15 if kind == "entmax15" else sparsemax
    info = SolveInfo()
    with torch.no_grad():
        y = fn(x, k=64, info=info)
    assert info.prefiltered and info.path.tolist() == [0, 0, 0, -1, -1, 0]
    rows, idx = info.candidates[0]
    assert rows.tolist() == [0, 1, 2, 5] and idx.shape[1] == info.ks[0]
    assert info.ks[1:] == [64, 512]  # the wide rows tried top-k before the sort
    assert idx.shape[1] > int(info.supports[rows].min())  # padded: some rows have fewer candidates
    # every candidate column (padding included) is a real column of its row; the padding holds zeros
    assert torch.equal(info.values[0], y[rows.unsqueeze(1), idx])
    assert torch.equal(info.supports, (y > 0).sum(1))
    torch.testing.assert_close(y, fn(x, k=64, prefilter=False), atol=0, rtol=0)
    ref = ref_entmax15 if kind == "entmax15" else ref_sparsemax
    _check_against_reference(lambda t: fn(t, k=64), x, ref=ref)
    factored = entmax15_factored(x, k=64, kind=kind)
    torch.testing.assert_close(factored.dense(n), y, atol=0, rtol=0)
    ent = -torch.xlogy(y, y + 1e-15).sum(-1)
    torch.testing.assert_close(support_entropy(None, factored), ent, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(support_entropy(y, info), ent, atol=1e-6, rtol=1e-6)


def test_bound_attempt_only_on_wide_rows():
    x = torch.randn(4, PREFILTER_MIN_N - 1) * 3
    assert not entmax15_solve_info(x).prefiltered
    assert entmax15_solve_info(torch.randn(4, PREFILTER_MIN_N) * 3).prefiltered


def test_fallback_only_for_failed_rows_small_k():
    n = 200
    x = torch.zeros(2, n)
    x[0, 0] = 10.0  # support 1: solved by top-2
    info = entmax15_solve_info(x, k=2)  # row 1 (uniform) must fall back
    assert info.path.tolist() == [0, -1]


def test_float64_gradcheck():
    gen = torch.Generator().manual_seed(3)
    x = (torch.randn(4, 40, generator=gen, dtype=torch.float64) * 2).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: entmax15(t, k=4), (x,))
    assert torch.autograd.gradcheck(entmax15_sort, (x,))


def test_dim_argument_and_leading_dims():
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(3, 5, 11, generator=gen)
    torch.testing.assert_close(entmax15(x, dim=1), ref_entmax15(x, dim=1), atol=VALUE_ATOL, rtol=0)
    torch.testing.assert_close(entmax15(x), ref_entmax15(x, dim=-1), atol=VALUE_ATOL, rtol=0)


def test_half_precision_input_is_computed_in_float32():
    x = torch.randn(4, 50).to(torch.bfloat16)
    y = entmax15(x)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), ref_entmax15(x.float()).to(torch.bfloat16).float())


def test_factored_output_is_the_dense_output():
    """entmax15_factored (inference without the dense output): its values rebuild entmax15's output exactly,
    and the entropy from them is the dense formula's; rows solved by top-k and by the sort both present."""
    gen = torch.Generator().manual_seed(8)
    x = torch.randn(32, 2000, generator=gen) * 0.3
    x[:4] = 0.001 * torch.randn(4, 2000, generator=gen)  # nearly flat rows: supports too large for top-k
    info = entmax15_factored(x, k=16)
    assert (info.path < 0).any() and (info.path >= 0).any()
    y = entmax15(x, k=16)
    torch.testing.assert_close(info.dense(x.shape[1]), y, atol=0, rtol=0)
    torch.testing.assert_close(support_entropy(None, info), -torch.xlogy(y, y + 1e-15).sum(-1), atol=1e-6, rtol=1e-6)
    assert torch.equal(info.supports, (y > 0).sum(1))
    with pytest.raises(ValueError, match="2-D"):
        entmax15_factored(x[0])


def test_module_adapts_k():
    m = Entmax15()
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(16, 5000, generator=gen) * 0.3  # support ~ dozens
    y = m(x)
    info = m.last_info
    assert info.max_support > 0
    assert torch.equal(info.supports, (y > 0).sum(1))  # every row's support size is recorded
    k_after = m._k_hint
    # k covers 2x a high quantile of the supports, not their maximum (the rest is retried on those rows only)
    assert k_after >= 2 * torch.quantile(info.supports.float(), HINT_QUANTILE)
    y2 = m(x)
    assert (m.last_info.path == 0).float().mean() >= HINT_QUANTILE  # the hint fits most rows now
    torch.testing.assert_close(y, y2, atol=0, rtol=0)
    torch.testing.assert_close(y, ref_entmax15(x), atol=VALUE_ATOL, rtol=0)


@pytest.mark.parametrize("kind", ["normal3", "sparse", "ties", "equal"])
def test_sparsemax_matches_reference(kind):
    x = _inputs(kind, 16, 3000, torch.Generator().manual_seed(6))
    _check_against_reference(lambda t: sparsemax(t, k=8), x, ref=ref_sparsemax)


def test_support_entropy_matches_dense():
    gen = torch.Generator().manual_seed(7)
    x = torch.cat([torch.randn(5, 3000, generator=gen) * 3, torch.randn(2, 3000, generator=gen) * 0.05])
    x.requires_grad_(True)
    info = SolveInfo()
    p = entmax15(x, k=16, info=info)
    assert (info.path == -1).sum() == 2 and (info.path >= 0).sum() == 5
    ent = support_entropy(p, info)
    dense = -(p * torch.log(p + 1e-15)).sum(-1)
    torch.testing.assert_close(ent, dense, atol=1e-6, rtol=1e-6)
    w = torch.randn(7, generator=gen)
    (g1,) = torch.autograd.grad((ent * w).sum(), x)
    p2 = ref_entmax15(x)
    (g2,) = torch.autograd.grad((-(p2 * torch.log(p2 + 1e-15)).sum(-1) * w).sum(), x)
    torch.testing.assert_close(g1, g2, atol=1e-5, rtol=1e-4)
