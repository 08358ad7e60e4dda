"""The fast path's inputs of scTab's first layer and its inference cache (used by ``sctab.models.tabnet``).

Why their own module: the architecture (``tabnet.py``) reads like the paper; what makes it fast at 19,331
genes lives here:

* ``SparseBNInput``, ``DenseBNInput``, ``TrainBNInput``: ``initial_bn(x)`` kept factored, so the first Linear
  folds the batch norm into its weights and a CSR batch is multiplied sparsely;
* ``MaskedInput``: ``mask * x`` kept factored, so the first Linear of a step reads only the mask's support;
* ``WeightTCache``: the transposed first-layer weights, made once per weight version for inference;
* ``csr_to_dense``: scipy's densify of a CSR batch on the CPU.

Each is checked against the reference TabNet (tests/models/test_tabnet.py, tests/models/test_reference_tabnet.py).
"""

from __future__ import annotations

import weakref
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["WeightTCache", "SparseBNInput", "DenseBNInput", "TrainBNInput", "MaskedInput", "BN_INPUTS",
           "CSR_DENSIFY_ABOVE", "csr_to_dense", "bn_affine"]


class WeightTCache:
    """Per-model inference cache of transposed first-layer weights (one per :class:`TabNetEncoder`).

    The first shared Linear (19,331 x 384, 30 MB) is read by gene rows twice per forward (sparse input and
    masked input), so without autograd the contiguous ``weight.t()`` is made once per weight version. It
    lives on the model, not in a global slot: ensemble members do not evict each other, and a model
    allocated where a freed one lived cannot be served the old weights. An entry holds while its parameter
    is the same tensor object with the same storage, version, shape, dtype and device; the encoder also
    empties the cache on ``.to()``/``.float()``/..., ``load_state_dict`` and ``train()``/``eval()``. Pickling
    or deep-copying a model gives an empty cache.
    """

    def __init__(self):
        self._entries: dict = {}  # id(weight) -> (weakref to weight, key, weight.t().contiguous())

    def get(self, weight: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and weight.requires_grad:
            return weight.t().contiguous()  # keep the graph to the parameter
        key = (weight._version, weight.data_ptr(), weight.shape, weight.dtype, weight.device)
        hit = self._entries.get(id(weight))
        if hit is not None and hit[1] == key and hit[0]() is weight:
            return hit[2]
        wt = weight.detach().t().contiguous()
        self._entries[id(weight)] = (weakref.ref(weight), key, wt)
        return wt

    def folded(self, weight: torch.Tensor, bn: nn.BatchNorm1d) -> Tuple[torch.Tensor, torch.Tensor]:
        """(``weight.t() * scale``, ``shift @ weight.t()``): the first Linear with the eval BN folded in, for a
        dense input (:class:`DenseBNInput`). Made once per version of the weight and of BN's parameters and
        statistics (an entry per weight: the newest BN state replaces the last)."""
        scale, shift = bn_affine(bn)
        if torch.is_grad_enabled() and (weight.requires_grad or scale.requires_grad):
            wt = weight.t()
            return wt * scale.unsqueeze(1), shift @ wt
        parts = (weight, bn.running_mean, bn.running_var, bn.weight, bn.bias)
        key = tuple((t._version, t.data_ptr(), t.shape, t.dtype, t.device) if t is not None else None
                    for t in parts) + (bn.eps,)
        slot = ("folded", id(weight))
        hit = self._entries.get(slot)
        if hit is not None and hit[1] == key and hit[0]() is weight:
            return hit[2]
        wt = self.get(weight)
        value = ((wt * scale.detach().unsqueeze(1)).contiguous(), shift.detach() @ wt)
        self._entries[slot] = (weakref.ref(weight), key, value)
        return value

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)

    def __reduce__(self):
        return (WeightTCache, ())


def _float32(t: torch.Tensor):
    """Autocast off (float32 arithmetic) on ``t``'s device, for the layers that stay exact under bf16-mixed."""
    return torch.autocast(device_type=t.device.type, enabled=False)


def _weight_t(weight: torch.Tensor, cache: Optional[WeightTCache]) -> torch.Tensor:
    """weight.t() made contiguous (genes x out: one row per gene), from ``cache`` when there is one."""
    return cache.get(weight) if cache is not None else weight.t().contiguous()


def bn_affine(bn: nn.BatchNorm1d) -> Tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) with bn(x) == x * scale + shift in eval mode (running statistics)."""
    scale = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    shift = -bn.running_mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias
    return scale, shift


class SparseBNInput:
    """``initial_bn(x)`` for a sparse CSR ``x`` in eval mode, never densified.

    ``linear(W)`` = ``(x*scale) @ W.T + shift @ W.T`` as one sparse matmul over the non-zeros;
    ``gather(r, idx)`` reads single entries (binary search in the sorted CSR keys), which is all the
    masked input needs; ``rows(r)`` densifies only the few rows whose entmax needed the full sort.
    """

    def __init__(self, x: torch.Tensor, bn: nn.BatchNorm1d, weight_cache: Optional[WeightTCache] = None):
        if x.layout != torch.sparse_csr or x.dim() != 2:
            raise ValueError(f"SparseBNInput needs a 2-D sparse CSR tensor, got layout {x.layout}")
        self.shape = x.shape
        self.weight_cache = weight_cache
        self.scale, self.shift = bn_affine(bn)
        crow, col, val = x.crow_indices(), x.col_indices(), x.values()
        self.crow, self.col = crow.long(), col.long()
        self.scaled = torch.sparse_csr_tensor(self.crow, self.col, val * self.scale[self.col], size=x.shape,
                                              check_invariants=False, device=val.device)
        row = torch.repeat_interleave(torch.arange(x.shape[0], device=val.device), self.crow.diff())
        keys = row * x.shape[1] + self.col
        if keys.numel() > 1 and not bool((keys[1:] > keys[:-1]).all()):
            keys, order = torch.sort(keys)  # columns unsorted within rows (or duplicates: caught below)
            val = val[order]
            if not bool((keys[1:] > keys[:-1]).all()):
                raise ValueError("sparse input has duplicate (row, gene) entries")
        self.keys, self.values = keys, val

    def linear(self, weight: torch.Tensor) -> torch.Tensor:
        with _float32(self.scaled):  # the sparse first layer is float32 under every precision
            wt = _weight_t(weight, self.weight_cache)
            return torch.sparse.mm(self.scaled, wt) + self.shift @ wt

    def gather(self, rows: Optional[torch.Tensor], idx: torch.Tensor) -> torch.Tensor:
        """BN(x)[rows[:, None], idx] (rows None: all rows), shape of ``idx``."""
        r = torch.arange(idx.shape[0], device=idx.device) if rows is None else rows
        return self.pairs(r.unsqueeze(1).expand_as(idx).flatten(), idx.flatten()).view(idx.shape)

    def pairs(self, r: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """BN(x)[r, c] for 1-D index tensors of equal length."""
        q = r * self.shape[1] + c
        if self.keys.numel():
            pos = torch.searchsorted(self.keys, q).clamp(max=self.keys.numel() - 1)
            raw = torch.where(self.keys[pos] == q, self.values[pos], self.values.new_zeros(()))
        else:
            raw = self.values.new_zeros(q.shape)
        return raw * self.scale[c] + self.shift[c]

    def rows(self, rows: torch.Tensor) -> torch.Tensor:
        idx = torch.arange(self.shape[1], device=rows.device).expand(len(rows), -1)
        return self.gather(rows, idx)

    def dense(self) -> torch.Tensor:
        return self.rows(torch.arange(self.shape[0], device=self.keys.device))


class DenseBNInput:
    """``initial_bn(x)`` for a dense ``x`` in eval mode, never materialised: the eval BN is a per-gene affine
    map, so the first Linear takes ``x @ (scale * W.T) + shift @ W.T`` and the masked input reads
    ``x[r, c] * scale[c] + shift[c]`` at the few (cell, gene) pairs it needs. Saves a full pass (and a
    cells x genes buffer) over the input per model; same values to float32 rounding."""

    def __init__(self, x: torch.Tensor, bn: nn.BatchNorm1d, weight_cache: Optional[WeightTCache] = None):
        self.x, self.shape, self.weight_cache, self.bn = x, x.shape, weight_cache, bn
        self.scale, self.shift = bn_affine(bn)

    def linear(self, weight: torch.Tensor) -> torch.Tensor:
        with _float32(self.x):
            if self.weight_cache is not None:
                w_scaled, bias = self.weight_cache.folded(weight, self.bn)
            else:
                wt = weight.t()
                w_scaled, bias = wt * self.scale.unsqueeze(1), self.shift @ wt
            return torch.addmm(bias, self.x, w_scaled)

    def pairs(self, r: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return self.x[r, c] * self.scale[c] + self.shift[c]

    def rows(self, rows: torch.Tensor) -> torch.Tensor:
        return self.x[rows] * self.scale + self.shift

    def dense(self) -> torch.Tensor:
        return self.x * self.scale + self.shift


class TrainBNInput(DenseBNInput):
    """``initial_bn(x)`` in training (batch statistics) for a dense ``x`` that needs no gradient, never
    materialised with its affine part: BN is ``xhat * weight + bias`` where ``xhat``, the batch-normalised
    input, is a constant (``x`` has no gradient). So the first Linear is ``xhat @ (weight * W.T) + bias @ W.T``
    and autograd never forms the gradient of the cells x genes BN output: the backward's dense ``G @ W``
    product (as large as the forward's) and BN's dense backward passes go; BN's weight and bias get the
    same gradients through the folded product. ``xhat`` and the running statistics come from BatchNorm1d's
    own kernel, so they are the module's."""

    def __init__(self, x: torch.Tensor, bn: nn.BatchNorm1d):
        if x.requires_grad:
            raise ValueError("TrainBNInput is for an input without gradient (the data)")
        self.shape, self.weight_cache = x.shape, None
        with torch.no_grad():
            track, m = bn.training and bn.track_running_stats, 0.0
            if track:
                bn.num_batches_tracked.add_(1)
                m = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
            self.x, _, _ = torch.native_batch_norm(x, None, None, bn.running_mean if track else None,
                                                   bn.running_var if track else None, True, m, bn.eps)
        self.scale = bn.weight if bn.weight is not None else x.new_ones(x.shape[1])
        self.shift = bn.bias if bn.bias is not None else x.new_zeros(x.shape[1])

    @staticmethod
    def usable(x: torch.Tensor) -> bool:
        """For data (no gradient) in float32 arithmetic; under bf16-mixed the BN output is formed as before."""
        return not x.requires_grad and not torch.is_autocast_enabled(x.device.type)

    def linear(self, weight: torch.Tensor) -> torch.Tensor:
        return torch.addmm(self.shift @ weight.t(), self.x, (weight * self.scale).t())  # weights change: no cache


#: default of TabNetEncoder.csr_densify_above (fraction of non-zero entries): below it the sparse first layer runs.
#: From the measured crossover of the two paths (`benchmarks/csr_crossover.py`, whole forward pass of the bench model,
#: 2,048 cells x 19,331 genes): the sparse path was faster below 6.4% non-zero (16:12, loaded) and 6.9% (19:40,
#: quiet) on the development machine (Intel Xeon, 2 cores); 6% keeps below both. Was 5%.
CSR_DENSIFY_ABOVE = 0.06


def csr_to_dense(x: torch.Tensor) -> torch.Tensor:
    """A 2-D sparse CSR tensor as a dense one. Duplicate (row, column) entries are an error, as for
    SparseBNInput.

    On the CPU scipy's C loop writes the rows (about 60 ms per 2,048 x 19,331 batch at 11% non-zeros, against
    about 300 ms for the scatter below and 600 ms for ``to_dense()`` here: the scatter first builds an int64
    key per non-zero); elsewhere one scatter of the values."""
    crow, col, val = x.crow_indices(), x.col_indices(), x.values()
    if val.device.type == "cpu" and not val.requires_grad and val.dtype in (torch.float32, torch.float64):
        import scipy.sparse as sp

        m = sp.csr_matrix((val.numpy(), col.numpy(), crow.numpy()), shape=tuple(x.shape), copy=False)
        if not m.has_canonical_format:  # unsorted columns (fine) or duplicates (not): check on a copy
            m = m.copy()
            nnz = m.nnz
            m.sum_duplicates()
            if m.nnz != nnz:
                raise ValueError("sparse input has duplicate (row, gene) entries")
        return torch.from_numpy(m.toarray())
    crow, col = crow.long(), col.long()
    row = torch.repeat_interleave(torch.arange(x.shape[0], device=val.device), crow.diff())
    keys = row * x.shape[1] + col
    if keys.numel() > 1 and not bool((keys[1:] > keys[:-1]).all()):
        if torch.unique(keys).numel() != keys.numel():
            raise ValueError("sparse input has duplicate (row, gene) entries")
    out = val.new_zeros(x.shape[0] * x.shape[1])
    out[keys] = val
    return out.view(x.shape[0], x.shape[1])


#: inputs of the first layer kept factored (BN not applied yet, or the mask not applied yet)
BN_INPUTS = (SparseBNInput, DenseBNInput)  # TrainBNInput is a DenseBNInput


class MaskedInput:
    """``mask * x`` kept in factored form so the first Linear can skip zero genes.

    The entmax mask has only a handful of non-zero genes per cell, and the solver
    reports candidate columns containing each row's support.  ``linear`` then
    computes ``(mask * x) @ W.T`` as an ``embedding_bag`` over those columns
    (rows that needed the full sort use the dense product).  Same values up to
    float summation order, same gradients for all parameters (entries outside
    the support carry no gradient through entmax), ~10x less work than the
    dense 19k-wide matmul.
    """

    def __init__(self, mask: torch.Tensor, x: "torch.Tensor | SparseBNInput | DenseBNInput", info,
                 weight_cache: Optional[WeightTCache] = None):
        self.mask, self.x, self.info, self.weight_cache = mask, x, info, weight_cache
        self._sparse_x = isinstance(x, BN_INPUTS)

    def _mask(self) -> torch.Tensor:
        return self.mask if self.mask is not None else self.info.dense(self.x.shape[1])

    def dense(self) -> torch.Tensor:
        return self._mask() * (self.x.dense() if self._sparse_x else self.x)

    def _x_pairs(self, r: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return self.x.pairs(r, c) if self._sparse_x else self.x[r, c]

    def linear(self, weight: torch.Tensor) -> torch.Tensor:
        """``(mask * x) @ W.T`` in float32 under every precision: the masked input is exact, and the fast path
        and the reference model agree whatever autocast does to the dense layers after it."""
        with _float32(weight):
            return self._linear(weight)

    def _linear(self, weight: torch.Tensor) -> torch.Tensor:
        info = self.info
        if info is None or info.dense_rows is None or not info.candidates:
            return F.linear(self.dense(), weight)
        weight_t = _weight_t(weight, self.weight_cache)  # (genes, out): one row per gene
        out = None
        for i, (rows, idx) in enumerate(info.candidates):
            if self.mask is None:  # factored mask: its values at the candidates
                m = info.values[i]
            else:
                m = self.mask.gather(1, idx) if rows is None else self.mask[rows.unsqueeze(1), idx]
            # only the support (mask > 0; candidates are ~2-6x more): one variable-length bag per row.
            # Exact for the output, and for gradients too: entmax's backward zeroes them off the support.
            keep = m.detach() > 0
            counts = keep.sum(1)
            offsets = torch.zeros_like(counts)
            offsets[1:] = counts.cumsum(0)[:-1]
            local = torch.arange(idx.shape[0], device=idx.device).unsqueeze(1).expand_as(idx)[keep]
            cols = idx[keep]
            vals = m[keep] * self._x_pairs(local if rows is None else rows[local], cols)
            part = F.embedding_bag(cols, weight_t, offsets, per_sample_weights=vals, mode="sum")
            if rows is None:
                out = part
            else:
                if out is None:
                    out = part.new_zeros(self.x.shape[0], weight.shape[0])
                out = out.index_put((rows,), part)
        if info.dense_rows is not False:
            rows = info.dense_rows
            x_rows = self.x.rows(rows) if self._sparse_x else self.x[rows]
            m_rows = self.mask[rows] if self.mask is not None else info.dense_values
            part = F.linear(m_rows * x_rows, weight)
            if out is None:
                out = part.new_zeros(self.x.shape[0], weight.shape[0])
            out = out.index_put((rows,), part)
        return out
