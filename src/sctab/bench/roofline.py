"""How close to this machine's limit a model row runs: the work per cell and a roofline measured in the same run.

The work of a row is counted from what really runs, not from a formula of the architecture: a torch dispatch
mode sees every aten op of one batch and adds

* the FLOPs of the products (dense mm / addmm / bmm / baddbmm: 2·m·k·n; a sparse CSR operand: 2·nnz·n), and
* the bytes each op reads and writes (its tensor arguments and results; views move nothing and are skipped).

The bytes are a per-op count with no reuse between ops through the caches, i.e. what the row would move were
nothing kept in cache from one op to the next: an upper bound on memory traffic, hence a lower bound on
arithmetic intensity. The roofline's two ceilings are measured in the same run, on all cores: a float32 GEMM
(FLOP/s) and a STREAM-like triad (bytes/s), each the best of its repeats, measured before and after the rows and the
higher kept. A row's attainable rate is ``min(peak FLOP/s, intensity x
bandwidth)``; the table shows what fraction of it the row reaches.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

_MM = {"aten::mm", "aten::addmm", "aten::_sparse_addmm", "aten::_sparse_mm", "aten::bmm", "aten::baddbmm"}


def _nbytes(t: torch.Tensor) -> int:
    """Bytes of a tensor's data (a sparse CSR tensor: its values and both index arrays)."""
    if t.layout == torch.sparse_csr:
        return sum(a.numel() * a.element_size() for a in (t.values(), t.crow_indices(), t.col_indices()))
    if t.is_sparse:
        return t._values().numel() * t._values().element_size() + t._indices().numel() * t._indices().element_size()
    return t.numel() * t.element_size()


def _product_flops(a: torch.Tensor, b: torch.Tensor) -> int:
    """2 x multiply-adds of ``a @ b`` (batched when 3-D); a sparse ``a`` costs its non-zeros only."""
    n = b.shape[-1]
    if a.layout == torch.sparse_csr or a.is_sparse:
        return 2 * int(a._nnz()) * n
    if a.dim() == 3:
        return 2 * a.shape[0] * a.shape[1] * a.shape[2] * n
    return 2 * a.shape[0] * a.shape[1] * n


class WorkCounter(TorchDispatchMode):
    """Counts the products' FLOPs and every op's bytes while active (see the module docstring)."""

    def __init__(self):
        super().__init__()
        self.flops = 0
        self.bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = func._schema.name
        if name in _MM:
            mats = [a for a in args if isinstance(a, torch.Tensor) and a.dim() >= 2]
            if len(mats) >= 2:
                self.flops += _product_flops(mats[-2], mats[-1])
        if not getattr(func, "is_view", False):
            tensors = [t for t in tree_flatten((args, kwargs, out))[0] if isinstance(t, torch.Tensor)]
            self.bytes += sum(_nbytes(t) for t in tensors)
        return out


def count_work(fn, n_cells: int) -> dict:
    """FLOPs and bytes per cell of ``fn()`` (one batch of ``n_cells`` cells), and their ratio (FLOP/byte)."""
    with WorkCounter() as c:
        fn()
    return {"flop_per_cell": c.flops / n_cells, "bytes_per_cell": c.bytes / n_cells,
            "intensity": c.flops / max(c.bytes, 1)}


@dataclass
class Peaks:
    gemm_flops: float  # float32 GEMM, FLOP/s: the best of the repeats (a ceiling is what the machine can do)
    bandwidth: float  # triad, bytes/s: the best of the repeats
    gemm_n: int
    triad_mib: float
    threads: int
    repeats: int
    when: str = ""  # e.g. "start: 390 GFLOP/s, 30 GB/s; end: ..." when several measurements were combined

    def attainable(self, intensity: float) -> float:
        return min(self.gemm_flops, intensity * self.bandwidth)


def higher(*peaks: "Peaks") -> "Peaks":
    """The ceilings of several measurements in one run (e.g. before and after the rows): the higher of each, since
    load from other jobs can only pull a measured ceiling down."""
    best = Peaks(max(p.gemm_flops for p in peaks), max(p.bandwidth for p in peaks), peaks[0].gemm_n,
                 peaks[0].triad_mib, peaks[0].threads, peaks[0].repeats)
    best.when = "; ".join(f"{p.when or f'#{i + 1}'}: {p.gemm_flops / 1e9:,.0f} GFLOP/s, {p.bandwidth / 1e9:,.1f} GB/s"
                          for i, p in enumerate(peaks))
    return best


def measure_peaks(gemm_n: int = 2048, triad_elems: int = 1 << 25, repeats: int = 7, when: str = "") -> Peaks:
    """The two ceilings of this machine, on torch's threads: ``gemm_n``-cube float32 GEMM and the triad
    ``a = b + s*c`` over three float32 arrays of ``triad_elems`` (128 MiB each by default: past any cache).
    Each is the best of ``repeats``: other jobs on the machine can only make a repeat slower."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(gemm_n, gemm_n, generator=g), torch.randn(gemm_n, gemm_n, generator=g)
    out = torch.empty(gemm_n, gemm_n)
    torch.mm(x, y, out=out)  # warm-up
    gemm = []
    for _ in range(repeats):
        t = time.perf_counter()
        torch.mm(x, y, out=out)
        gemm.append(2 * gemm_n ** 3 / (time.perf_counter() - t))
    del x, y, out
    b, c = torch.rand(triad_elems, generator=g), torch.rand(triad_elems, generator=g)
    a = torch.empty(triad_elems)
    torch.add(b, c, alpha=0.5, out=a)  # warm-up (pages touched)
    bw = []
    for _ in range(repeats):
        t = time.perf_counter()
        torch.add(b, c, alpha=0.5, out=a)
        bw.append(3 * triad_elems * 4 / (time.perf_counter() - t))
    return Peaks(max(gemm), max(bw), gemm_n, triad_elems * 4 / 2 ** 20, torch.get_num_threads(), repeats, when)


def roofline_rows(rows: list[dict], peaks: Peaks) -> list[dict]:
    """Per measured model row with counted work: achieved FLOP/s and bytes/s, the attainable FLOP/s at the
    row's intensity, and the fraction of it reached (ours, wall-clock median)."""
    out = []
    for r in rows:
        work = (r.get("ours") or {}).get("work") if r.get("status") == "ok" else None
        if not work:
            continue
        rate = r["median"]
        flops, nbytes = rate * work["flop_per_cell"], rate * work["bytes_per_cell"]
        attainable = peaks.attainable(work["intensity"])
        out.append({"name": r["name"], "figure": r["figure"], "cells_per_s": rate, **work,
                    "achieved_flops": flops, "achieved_bytes": nbytes, "attainable_flops": attainable,
                    "bound": "compute" if attainable >= peaks.gemm_flops else "memory",
                    "fraction": flops / attainable if attainable else float("nan"),
                    "what": work.get("what", "")})
    return out


def roofline_table(rows: list[dict], peaks: Peaks) -> str:
    """The 'how close to the limit' section of the bench file."""
    lines = ["### How close to the limit (roofline measured in this run)\n",
             f"Ceilings on {peaks.threads} threads, best of {peaks.repeats} (load only slows a repeat): float32 "
             f"GEMM ({peaks.gemm_n}^3) **{peaks.gemm_flops / 1e9:,.1f} GFLOP/s**; triad a = b + s*c over "
             f"3 x {peaks.triad_mib:,.0f} MiB **{peaks.bandwidth / 1e9:,.1f} GB/s**"
             + (f" (the higher of {peaks.when})" if peaks.when else "") + ". Work per cell counted from "
             "the ops that ran on one batch (products' FLOPs; bytes read and written per op, no cache reuse "
             "between ops: an upper bound on traffic). Attainable = min(GEMM peak, intensity x bandwidth).\n",
             "| Row | Ours (cells/s) | FLOP per cell | Bytes per cell | FLOP/byte | Achieved GFLOP/s | "
             "Achieved GB/s | Attainable GFLOP/s (bound) | Fraction of attainable |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in roofline_rows(rows, peaks):
        what = f"<br>*{r['what']}*" if r["what"] else ""
        lines.append(f"| {r['figure']}{what} | {r['cells_per_s']:,.0f} | {r['flop_per_cell'] / 1e6:,.1f} M | "
                     f"{r['bytes_per_cell'] / 1e6:,.2f} MB | {r['intensity']:.2f} | "
                     f"{r['achieved_flops'] / 1e9:,.1f} | {r['achieved_bytes'] / 1e9:,.1f} | "
                     f"{r['attainable_flops'] / 1e9:,.1f} ({r['bound']}) | {r['fraction']:.1%} |")
    return "\n".join(lines)
