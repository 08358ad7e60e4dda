"""Exact 1.5-entmax (and sparsemax) over the last dimension: the functions and modules scTab's TabNet uses.

scTab's attentive transformer turns an (n_cells, n_genes ~ 19,331) score matrix into a sparse feature mask
with 1.5-entmax. The textbook algorithm sorts every row, although the mask keeps only a handful of genes;
``entmax15`` solves the same threshold *exactly* from the top-k entries of each row (after a cheaper bound on
wide rows) and only sorts the rows whose support does not fit. The forward solvers and their math are
:mod:`sctab.models.entmax_solvers`; this module holds the autograd Functions with their closed-form backward,
the public functional API and the modules that adapt k from call to call.

Backward (closed form).  On the support p_i = (z_i - tau)^2, and sum p = 1
gives d tau / d z_j = s_j / sum(s) with s = sqrt(p).  With dz/dx = 1/2:

    dp_i / dx_j = s_i * delta_ij - s_i s_j / sum(s)
    grad_x = s * g - s * (sum(s * g) / sum(s)).

For sparsemax the same formula holds with s = 1[p > 0].
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from sctab.models.entmax_solvers import DEFAULT_K, SolveInfo, solve_sort, solve_topk

__all__ = [
    "entmax15",
    "entmax15_sort",
    "sparsemax",
    "Entmax15",
    "Sparsemax",
    "SolveInfo",
    "entmax15_solve_info",
    "entmax15_factored",
    "support_entropy",
    "DEFAULT_K",
    "HINT_QUANTILE",
]


# --------------------------------------------------------------------------- #
# closed-form backward and the autograd Functions
# --------------------------------------------------------------------------- #
def _scale_vector(p: torch.Tensor, kind: str) -> torch.Tensor:
    """s in grad = s*g - s*sum(s*g)/sum(s): sqrt(p) for entmax15, 1[p>0] for sparsemax."""
    return torch.sqrt(p) if kind == "entmax15" else (p > 0).to(p.dtype)


def _grad_rows(p: torch.Tensor, g: torch.Tensor, kind: str) -> torch.Tensor:
    s = _scale_vector(p, kind)
    sg = s * g
    q = sg.sum(-1, keepdim=True) / s.sum(-1, keepdim=True)
    return sg - q * s


class _SortFunction(torch.autograd.Function):
    """Reference: full sort in forward, dense closed-form backward."""

    @staticmethod
    def forward(ctx, x, kind):
        out, _ = solve_sort(x, kind)
        ctx.kind = kind
        ctx.save_for_backward(out)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        (out,) = ctx.saved_tensors
        return _grad_rows(out, g, ctx.kind), None


class _TopkFunction(torch.autograd.Function):
    """Fast exact path: top-k candidates, sparse backward on the candidates."""

    @staticmethod
    def forward(ctx, x, kind, k, info, prefilter):
        out, segments, dense = solve_topk(x, kind, k, info, prefilter=prefilter)
        ctx.kind = kind
        ctx.shape = x.shape
        ctx.layout = []
        tensors = []
        for rows, idx, p in segments:
            ctx.layout.append(("seg", rows is not None))
            tensors += ([rows] if rows is not None else []) + [idx, p]
        if dense is not None:
            rows, p_dense = dense
            ctx.layout.append(("dense", rows is not None))
            tensors += ([rows] if rows is not None else []) + [p_dense]
        ctx.save_for_backward(*tensors)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        B, n = ctx.shape
        saved = list(ctx.saved_tensors)
        g = g.contiguous()
        if ctx.layout == [("dense", False)]:  # every row was solved by the full sort
            return _grad_rows(saved[0], g, ctx.kind), None, None, None, None
        grad = g.new_zeros(B, n)
        pos = 0
        for what, has_rows in ctx.layout:
            rows = None
            if has_rows:
                rows = saved[pos]
                pos += 1
            if what == "seg":
                idx, p = saved[pos], saved[pos + 1]
                pos += 2
                g_rows = g if rows is None else g[rows]
                gs = _grad_rows(p, g_rows.gather(1, idx), ctx.kind)
                if rows is None:
                    grad.scatter_(1, idx, gs)
                else:
                    flat = (rows.unsqueeze(1) * n + idx).flatten()
                    grad.view(-1).index_copy_(0, flat, gs.flatten())
            else:
                p_dense = saved[pos]
                pos += 1
                if rows is None:
                    grad = _grad_rows(p_dense, g, ctx.kind)
                else:
                    grad[rows] = _grad_rows(p_dense, g[rows], ctx.kind)
        return grad, None, None, None, None


# --------------------------------------------------------------------------- #
# public functional API
# --------------------------------------------------------------------------- #
def _apply(x: torch.Tensor, dim: int, fn):
    """Move ``dim`` last, flatten to 2-D, compute in >= float32, restore."""
    if x.dim() == 0:
        raise ValueError("entmax needs at least a 1-D input")
    orig_dtype = x.dtype
    if not torch.is_floating_point(x):
        raise TypeError(f"entmax needs a floating point input, got {x.dtype}")
    xt = x.movedim(dim, -1)
    shape = xt.shape
    x2 = xt.reshape(-1, shape[-1])
    if orig_dtype in (torch.float16, torch.bfloat16):
        x2 = x2.float()
    x2 = x2.contiguous()
    if x2.shape[0] == 0 or x2.shape[-1] == 0:
        out = x2.clone()
    else:
        out = fn(x2)
    return out.to(orig_dtype).reshape(shape).movedim(-1, dim)


def entmax15_sort(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """1.5-entmax via a full sort of each row (reference baseline)."""
    return _apply(x, dim, lambda x2: _SortFunction.apply(x2, "entmax15"))


def entmax15(
    x: torch.Tensor, dim: int = -1, k: Optional[int] = None, info: Optional[SolveInfo] = None,
    prefilter: bool = True,
) -> torch.Tensor:
    """Exact 1.5-entmax along ``dim``: the bound attempt on wide rows (``prefilter``, see
    :mod:`sctab.models.entmax_solvers`), then top-k candidates (default k=64).

    Rows whose support has >= k entries are retried with 8x more candidates and
    finally solved by a full sort, so the result is always the exact solution.
    Pass a :class:`SolveInfo` to learn which rows took which path.
    """
    k = DEFAULT_K if k is None else k
    return _apply(x, dim, lambda x2: _TopkFunction.apply(x2, "entmax15", k, info, prefilter))


def sparsemax(
    x: torch.Tensor, dim: int = -1, k: Optional[int] = None, info: Optional[SolveInfo] = None,
    prefilter: bool = True,
) -> torch.Tensor:
    """Exact sparsemax (Euclidean projection onto the simplex), same bound and top-k scheme."""
    k = DEFAULT_K if k is None else k
    return _apply(x, dim, lambda x2: _TopkFunction.apply(x2, "sparsemax", k, info, prefilter))


def entmax15_factored(x: torch.Tensor, k: Optional[int] = None, kind: str = "entmax15",
                      prefilter: bool = True) -> SolveInfo:
    """1.5-entmax (or sparsemax) of a 2-D ``x`` over its last dimension, without the dense output, for
    inference: the non-zeros are ``info.values`` at ``info.candidates`` (plus ``info.dense_values`` for
    full-sort rows). Skips zero-filling and scattering a (rows, n) array that a reader of a few entries per
    row does not need. No autograd."""
    if x.dim() != 2 or not torch.is_floating_point(x):
        raise ValueError(f"entmax15_factored needs a 2-D floating point input, got {tuple(x.shape)} {x.dtype}")
    info = SolveInfo()
    with torch.no_grad():
        x = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x  # as _apply: at least float32
        solve_topk(x.contiguous(), kind, DEFAULT_K if k is None else k, info, materialize=False,
                    prefilter=prefilter)
    return info


def entmax15_solve_info(x: torch.Tensor, k: Optional[int] = None, prefilter: bool = True) -> SolveInfo:
    """Which path (bound, top-k attempt or full-sort fallback) each row of ``x`` takes."""
    info = SolveInfo()
    with torch.no_grad():
        entmax15(x, dim=-1, k=k, info=info, prefilter=prefilter)
    return info


def support_entropy(p: torch.Tensor, info: SolveInfo, eps: float = 1e-15) -> torch.Tensor:
    """Per-row sum(-p * log(p + eps)) of a 2-D entmax/sparsemax output ``p``.

    Only the candidate columns recorded in ``info`` are visited (entries outside
    the support are exactly 0 and contribute 0), instead of a log over all
    ~19k genes.  Differentiable through ``p``; the gradient w.r.t. the entmax
    input equals that of the dense formula because entmax's backward ignores
    the gradient on zero entries.
    """
    if p is None:  # factored output (entmax15_factored): the values are in info
        return _factored_entropy(info, eps)
    if p.dim() == 2 and p.shape[0] == 0:
        return p.new_zeros(0)
    if p.dim() != 2 or info.path is None or info.path.shape[0] != p.shape[0]:
        raise ValueError("support_entropy needs the 2-D output and the SolveInfo of the same call")
    if info.dense_rows is None:  # every row needed the full sort
        return -torch.xlogy(p, p + eps).sum(-1)
    ent = p.new_zeros(p.shape[0])
    for rows, idx in info.candidates:
        v = (p if rows is None else p[rows]).gather(1, idx)
        e = -torch.xlogy(v, v + eps).sum(-1)
        ent = e if rows is None else ent.index_put((rows,), e)
    if info.dense_rows is not False:
        rows = info.dense_rows
        ent = ent.index_put((rows,), -torch.xlogy(p[rows], p[rows] + eps).sum(-1))
    return ent


def _factored_entropy(info: SolveInfo, eps: float) -> torch.Tensor:
    ref = info.values[0] if info.values else info.dense_values
    if info.dense_rows is None:
        return -torch.xlogy(info.dense_values, info.dense_values + eps).sum(-1)
    ent = ref.new_zeros(info.path.shape[0])
    for (rows, _), v in zip(info.candidates, info.values):
        e = -torch.xlogy(v, v + eps).sum(-1)
        ent = e if rows is None else ent.index_put((rows,), e)
    if info.dense_rows is not False:
        v = info.dense_values
        ent = ent.index_put((info.dense_rows,), -torch.xlogy(v, v + eps).sum(-1))
    return ent


def _next_k(max_support: int) -> int:
    """Candidate count for the next call: 2x the last support, power of two >= 16."""
    target = max(16, 2 * max_support + 1)
    return 1 << (target - 1).bit_length()


#: the next call's k covers this quantile of the last call's support sizes (2x, see _next_k), not their maximum
HINT_QUANTILE = 0.9


def _hint_support(supports: Optional[torch.Tensor], max_support: int) -> int:
    """The support size the next k is made for: a high quantile of the last call's rows.

    Why not the maximum: top-k costs grow with k over every row (at 19,331 genes, k=256 costs ~3x k=32), while
    the few rows above the quantile are solved again with 8x the candidates, on those rows only."""
    if supports is None or supports.numel() < 2:
        return max_support
    return int(torch.quantile(supports.float(), HINT_QUANTILE))


class _AdaptiveMax(nn.Module):
    """Shared module logic: remember the last support size to pick k next time.

    The attention masks of a training run change slowly, so the last batch's
    largest support is a good guess for how many candidates the next needs;
    a wrong guess only costs time (the fallback keeps the result exact).
    """

    kind = "entmax15"
    #: try the bound attempt first on wide rows (see :mod:`sctab.models.entmax_solvers`)
    prefilter = True

    def __init__(self, dim: int = -1, k: Optional[int] = None):
        super().__init__()
        self.dim = dim
        self.k = k
        self._k_hint = DEFAULT_K
        self.last_info: Optional[SolveInfo] = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_info(x)[0]

    def forward_with_info(self, x: torch.Tensor):
        """Output and the :class:`SolveInfo` of this call (for :func:`support_entropy`)."""
        info = SolveInfo()
        k = self.k if self.k is not None else self._k_hint
        fn = entmax15 if self.kind == "entmax15" else sparsemax
        out = fn(x, dim=self.dim, k=k, info=info, prefilter=self.prefilter)
        self.last_info = info
        if self.k is None and info.path is not None:
            self._k_hint = _next_k(_hint_support(info.supports, info.max_support))
        return out, info

    def solve(self, x: torch.Tensor) -> SolveInfo:
        """:func:`entmax15_factored` with this module's k (and its adaptation): inference without the dense
        output."""
        info = entmax15_factored(x, self.k if self.k is not None else self._k_hint, self.kind, self.prefilter)
        self.last_info = info
        if self.k is None:
            self._k_hint = _next_k(_hint_support(info.supports, info.max_support))
        return info

    def extra_repr(self) -> str:
        return f"dim={self.dim}, k={'adaptive' if self.k is None else self.k}"


class Entmax15(_AdaptiveMax):
    """1.5-entmax module (exact; adaptive top-k candidates when ``k`` is None)."""

    kind = "entmax15"


class Sparsemax(_AdaptiveMax):
    """Sparsemax module (exact; adaptive top-k candidates when ``k`` is None)."""

    kind = "sparsemax"
