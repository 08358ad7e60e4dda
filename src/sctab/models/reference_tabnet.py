"""A plain TabNet of the paper's architecture: the oracle the fast path is checked against.

Why a second implementation: :mod:`sctab.models.tabnet` computes scTab's forward pass with top-k entmax,
sparse first layers, folded batch norms and weight caches. A check of that code against itself with the
shortcuts switched off shares every line that is not a shortcut. This module shares none: it imports only
torch, writes the sort-based 1.5-entmax out, and does every product densely, in the order the paper's
Methods describe. It has the same state-dict layout, so any scTab checkpoint or model loads into it
(``ReferenceTabNet.like(model)``). It is slow on purpose; use it in tests and as the bench's baseline.

Forward returns ``(logits, mask_entropy)`` like :class:`sctab.models.tabnet.TabNet`. Precision: under
bf16-mixed autocast the mask (entmax) and the first layer's product with the masked input stay in float32,
the project's rule for both implementations (docs/gpu.md); every other layer follows autocast.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ReferenceTabNet", "entmax15_by_sorting", "sparsemax_by_sorting"]


def entmax15_by_sorting(scores: torch.Tensor) -> torch.Tensor:
    """1.5-entmax over the last axis (Peters et al. 2019): p = [(z/2 - tau)_+]^2 with tau chosen so that p sums
    to 1, found by sorting every score. The support is found without gradients; tau is then recomputed from
    the support's scores, so autograd gives the exact Jacobian without dividing by zero off the support."""
    z = (scores - scores.max(dim=-1, keepdim=True).values) / 2
    with torch.no_grad():
        ordered = torch.sort(z, dim=-1, descending=True).values
        k = torch.arange(1, z.shape[-1] + 1, device=z.device, dtype=z.dtype)
        mean = ordered.cumsum(-1) / k
        mean_sq = (ordered * ordered).cumsum(-1) / k
        disc = ((1 - k * (mean_sq - mean * mean)) / k).clamp(min=0)
        tau_k = mean - disc.sqrt()
        size = (tau_k <= ordered).sum(dim=-1, keepdim=True)             # support size, at least 1
        threshold = ordered.gather(-1, size - 1)                         # the smallest score in the support
        support = (z >= threshold).to(z.dtype)
    n = support.sum(-1, keepdim=True)
    s1 = (z * support).sum(-1, keepdim=True)
    s2 = (z * z * support).sum(-1, keepdim=True)
    tau = s1 / n - torch.sqrt((1 - (s2 - s1 * s1 / n)) / n)
    return torch.clamp(z - tau, min=0) ** 2


def sparsemax_by_sorting(scores: torch.Tensor) -> torch.Tensor:
    """Sparsemax over the last axis (Martins & Astudillo 2016): the Euclidean projection onto the simplex."""
    z = scores - scores.max(dim=-1, keepdim=True).values
    with torch.no_grad():
        ordered = torch.sort(z, dim=-1, descending=True).values
        k = torch.arange(1, z.shape[-1] + 1, device=z.device, dtype=z.dtype)
        size = (1 + k * ordered > ordered.cumsum(-1)).sum(dim=-1, keepdim=True)
        support = (z >= ordered.gather(-1, size - 1)).to(z.dtype)
    tau = ((z * support).sum(-1, keepdim=True) - 1) / support.sum(-1, keepdim=True)
    return torch.clamp(z - tau, min=0)


class _GhostBN(nn.Module):
    """Batch norm over virtual batches in training (``max(B // size, 1)`` chunks, as scTab splits them)."""

    def __init__(self, width: int, virtual_batch_size: int, momentum: float):
        super().__init__()
        self.virtual_batch_size = virtual_batch_size
        self.bn = nn.BatchNorm1d(width, momentum=momentum)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return self.bn(x)
        parts = x.chunk(max(x.shape[0] // self.virtual_batch_size, 1), dim=0)
        return torch.cat([self.bn(p) for p in parts], dim=0)


class _GLULayer(nn.Module):
    def __init__(self, fc: nn.Linear, width: int, virtual_batch_size: int, momentum: float):
        super().__init__()
        self.fc = fc
        self.bn = _GhostBN(2 * width, virtual_batch_size, momentum)

    def forward(self, x: torch.Tensor, float32: bool = False) -> torch.Tensor:
        if float32:  # the product with the masked input, in float32 under every precision (see _run)
            with torch.autocast(device_type=x.device.type, enabled=False):
                h = self.fc(x.float() if x.dtype in (torch.float16, torch.bfloat16) else x)
        else:
            h = self.fc(x)
        return F.glu(self.bn(h), dim=-1)  # first half * sigmoid(second half)


class _GLUBlock(nn.Module):
    """GLU layers with residuals scaled by sqrt(1/2), none around the first layer of a block that opens the
    transformer. A shared block also registers its Linear layers as ``shared_layers`` (the published layout)."""

    def __init__(self, fcs: list[nn.Linear], width: int, opens: bool, shared: bool, vbs: int, momentum: float):
        super().__init__()
        self.opens = opens
        if shared:
            self.shared_layers = nn.ModuleList(fcs)
        self.glu_layers = nn.ModuleList(_GLULayer(fc, width, vbs, momentum) for fc in fcs)

    def forward(self, x: torch.Tensor, first_float32: bool = False) -> torch.Tensor:
        for i, layer in enumerate(self.glu_layers):
            if i == 0 and self.opens:
                x = layer(x, float32=first_float32)
            else:
                x = (x + layer(x)) * math.sqrt(0.5)
        return x


class _FeatureTransformer(nn.Module):
    def __init__(self, shared_fcs: list[nn.Linear], n_independent: int, n_in: int, width: int, vbs: int,
                 momentum: float):
        super().__init__()
        self.shared = (_GLUBlock(shared_fcs, width, True, True, vbs, momentum) if shared_fcs else nn.Identity())
        if n_independent:
            first_in = width if shared_fcs else n_in
            fcs = [nn.Linear(first_in if i == 0 else width, 2 * width, bias=False) for i in range(n_independent)]
            self.specifics = _GLUBlock(fcs, width, not shared_fcs, False, vbs, momentum)
        else:
            self.specifics = nn.Identity()

    def forward(self, x: torch.Tensor, first_float32: bool = False) -> torch.Tensor:
        if isinstance(self.shared, _GLUBlock):
            x = self.shared(x, first_float32)
        elif isinstance(self.specifics, _GLUBlock):
            return self.specifics(x, first_float32)
        return self.specifics(x)


class _AttentiveTransformer(nn.Module):
    def __init__(self, n_a: int, n_genes: int, vbs: int, momentum: float):
        super().__init__()
        self.fc = nn.Linear(n_a, n_genes, bias=False)
        self.bn = _GhostBN(n_genes, vbs, momentum)

    def forward(self, att: torch.Tensor) -> torch.Tensor:
        return self.bn(self.fc(att))


class _Encoder(nn.Module):
    def __init__(self, n_genes: int, n_d: int, n_a: int, n_steps: int, n_shared: int, n_independent: int,
                 vbs: int, momentum: float):
        super().__init__()
        width = n_d + n_a
        self.initial_bn = nn.BatchNorm1d(n_genes, momentum=0.01)
        shared = [nn.Linear(n_genes if i == 0 else width, 2 * width, bias=False) for i in range(n_shared)]

        def transformer() -> _FeatureTransformer:
            return _FeatureTransformer(shared, n_independent, n_genes, width, vbs, momentum)

        self.initial_splitter = transformer()
        self.feat_transformers = nn.ModuleList(transformer() for _ in range(n_steps))
        self.att_transformers = nn.ModuleList(_AttentiveTransformer(n_a, n_genes, vbs, momentum)
                                              for _ in range(n_steps))


class ReferenceTabNet(nn.Module):
    """The paper's TabNet, computed plainly. Arguments as :class:`sctab.models.tabnet.TabNet`'s."""

    def __init__(self, input_dim: int, output_dim: int, n_d: int = 128, n_a: int = 64, n_steps: int = 1,
                 gamma: float = 1.3, n_independent: int = 5, n_shared: int = 3, epsilon: float = 1e-15,
                 virtual_batch_size: int = 256, momentum: float = 0.02, mask_type: str = "entmax",
                 lambda_sparse: float = 1e-5):
        super().__init__()
        if mask_type not in ("entmax", "sparsemax"):
            raise ValueError(f"unknown mask_type {mask_type!r}; expected 'entmax' or 'sparsemax'")
        self.hparams = dict(input_dim=input_dim, output_dim=output_dim, n_d=n_d, n_a=n_a, n_steps=n_steps,
                            gamma=gamma, n_independent=n_independent, n_shared=n_shared, epsilon=epsilon,
                            virtual_batch_size=virtual_batch_size, momentum=momentum, mask_type=mask_type,
                            lambda_sparse=lambda_sparse)
        self.n_d, self.n_steps, self.gamma, self.epsilon = n_d, n_steps, gamma, epsilon
        self.lambda_sparse = lambda_sparse  # the weight of the mask entropy in the training loss
        self.select = entmax15_by_sorting if mask_type == "entmax" else sparsemax_by_sorting
        self.encoder = _Encoder(input_dim, n_d, n_a, n_steps, n_shared, n_independent, virtual_batch_size,
                                momentum)
        self.final_mapping = nn.Linear(n_d, output_dim, bias=False)

    @classmethod
    def like(cls, model: nn.Module) -> ReferenceTabNet:
        """A reference with ``model``'s hyper-parameters (its ``hparams``), weights, buffers, batch-norm settings
        (eps and momentum are not in a state dict), mode and device."""
        ref = cls(**model.hparams)
        ref.load_state_dict(model.state_dict(), strict=True)
        theirs = dict(model.named_modules())
        for name, bn in ref.named_modules():
            if isinstance(bn, nn.BatchNorm1d):
                bn.eps, bn.momentum = theirs[name].eps, theirs[name].momentum
        first = next(model.parameters())
        return ref.to(device=first.device, dtype=first.dtype).train(model.training)

    def _run(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        if x.layout == torch.sparse_csr:
            x = x.to_dense()
        enc = self.encoder
        x = enc.initial_bn(x)
        att = enc.initial_splitter(x)[:, self.n_d:]
        prior = torch.ones_like(x)
        decision = torch.zeros(x.shape[0], self.n_d, dtype=x.dtype, device=x.device)
        entropy = x.new_zeros(())
        masks = []
        for step in range(self.n_steps):
            scores = enc.att_transformers[step](att) * prior
            if scores.dtype in (torch.float16, torch.bfloat16):  # the mask in float32 under every precision
                scores = scores.float()
            mask = self.select(scores).to(x.dtype)
            entropy = entropy + (-mask * torch.log(mask + self.epsilon)).sum(dim=-1).mean()
            prior = prior * (self.gamma - mask)
            out = enc.feat_transformers[step](mask * x, first_float32=True)
            decision = decision + F.relu(out[:, :self.n_d])
            att = out[:, self.n_d:]
            masks.append(mask)
        return decision, entropy / self.n_steps, masks

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        decision, entropy, _ = self._run(x)
        return self.final_mapping(decision), entropy

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self._run(x)[0]

    def forward_masks(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self._run(x)[2]
