"""scTab's TabNet variant (Fischer et al., Methods "Model details").

Layout and semantics follow the TabNet encoder used by scTab so that published
scTab checkpoints load with ``strict=True`` (see
``tests/data/sctab_checkpoint_layout.json``, from the published-artifact reference):

* ``encoder.initial_bn``: BatchNorm1d over the genes (momentum 0.01).
* ``encoder.initial_splitter`` and ``encoder.feat_transformers.<step>``: feature
  transformers = ``shared`` GLU block (its ``fc`` Linear modules are one
  ModuleList registered as ``shared.shared_layers`` in *every* transformer and
  re-used as ``shared.glu_layers.<i>.fc``, i.e. one tensor under several keys)
  followed by a step-specific ``specifics`` GLU block.
* ``encoder.att_transformers.<step>``: Linear(n_a -> genes, no bias) -> ghost
  BN -> * prior -> 1.5-entmax mask.
* ``final_mapping``: Linear(n_d -> classes, no bias).

Fast paths (each checked against the independent plain model, ``reference_tabnet.ReferenceTabNet``, in
tests/models/test_tabnet.py and tests/models/test_reference_tabnet.py):

* masks by the exact top-k 1.5-entmax (``entmax.py``) instead of a full sort of 19,331 scores per cell;
* the masked input ``M * x`` consumed sparsely by the first Linear (``MaskedInput``; the inputs and the
  weight cache are in ``tabnet_inputs.py``);
* in eval mode, a torch sparse CSR ``x`` (the ``sparse`` loader's ``x_format="csr"``) feeds the initial BN
  and the first shared Linear as a sparse matmul (``SparseBNInput``): BN in eval is a per-gene affine
  map, so ``BN(x) @ W.T = (a*x) @ W.T + c @ W.T`` touches only the non-zeros (~8% of the genes);
* in eval mode the attentive transformer's BN is folded into its Linear (one pass less over cells x genes).

They are always on; the plain model to compare with is ``ReferenceTabNet.like(model)``, which shares no
code with this module (the baseline of ``make bench``).

Forward returns ``(logits, M_loss)`` with ``M_loss`` = mean over cells of the
mask entropy sum(-M log(M + eps)), averaged over steps.  Train with
``CE + lambda_sparse * M_loss`` (identical to scTab's ``CE - lambda * m_loss``,
which uses the negated entropy).
"""

from __future__ import annotations

import math
import warnings
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .entmax import Entmax15, Sparsemax, support_entropy
from .tabnet_inputs import (
    BN_INPUTS,
    CSR_DENSIFY_ABOVE,
    DenseBNInput,
    MaskedInput,
    SparseBNInput,
    TrainBNInput,
    WeightTCache,
    bn_affine,
    csr_to_dense,
)

__all__ = [
    "TabNet",
    "TabNetEncoder",
    "FeatTransformer",
    "AttentiveTransformer",
    "GLUBlock",
    "GLULayer",
    "GhostBatchNorm",
    "MASK_TYPES",
]

MASK_TYPES = ("entmax", "sparsemax")
# torch marks sparse CSR "beta"; we only use sparse.mm and read its index arrays
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")
_SQRT_HALF = math.sqrt(0.5)


def _init_glu_fc(fc: nn.Linear, fan_in: int, fan_out: int) -> None:
    """TabNet's Xavier-normal gain for GLU projections (keeps the GLU input scale)."""
    torch.nn.init.xavier_normal_(fc.weight, gain=math.sqrt((fan_in + fan_out) / math.sqrt(fan_in)))


def _init_plain_fc(fc: nn.Linear, fan_in: int, fan_out: int) -> None:
    """TabNet's Xavier-normal gain for non-GLU projections (attention, final mapping)."""
    torch.nn.init.xavier_normal_(
        fc.weight, gain=math.sqrt((fan_in + fan_out) / math.sqrt(4 * fan_in))
    )


class GhostBatchNorm(nn.Module):
    """Ghost BN: in training, normalise virtual batches of ~virtual_batch_size cells.

    Splits like scTab into ``max(B // vbs, 1)`` chunks (torch.chunk sizes);
    in eval mode running statistics make the split irrelevant, so one call.
    The wrapped BatchNorm1d is ``.bn`` (checkpoint key ``...bn.bn.*``).
    """

    def __init__(self, num_features: int, virtual_batch_size: int = 256, momentum: float = 0.02):
        super().__init__()
        if virtual_batch_size < 1:
            raise ValueError(f"virtual_batch_size must be >= 1, got {virtual_batch_size}")
        self.virtual_batch_size = int(virtual_batch_size)
        self.bn = nn.BatchNorm1d(num_features, momentum=momentum)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n_chunks = max(x.shape[0] // self.virtual_batch_size, 1)
        if not self.training or n_chunks == 1:
            return self.bn(x)
        return torch.cat([self.bn(c) for c in x.chunk(n_chunks, 0)], dim=0)


class GLULayer(nn.Module):
    """fc (no bias) -> ghost BN -> GLU; ``fc`` may be a shared Linear."""

    def __init__(self, input_dim: int, output_dim: int, fc: Optional[nn.Linear] = None, virtual_batch_size: int = 256,
                 momentum: float = 0.02):
        super().__init__()
        self.output_dim = output_dim
        if fc is None:
            fc = nn.Linear(input_dim, 2 * output_dim, bias=False)
            _init_glu_fc(fc, input_dim, 2 * output_dim)
        self.fc = fc
        self.bn = GhostBatchNorm(2 * output_dim, virtual_batch_size, momentum)

    def forward(self, x: "torch.Tensor | MaskedInput | SparseBNInput") -> torch.Tensor:
        if isinstance(x, (MaskedInput, *BN_INPUTS)):
            h = self.bn(x.linear(self.fc.weight))
        elif not self.training:  # eval BN is affine: folded into the Linear, one pass fewer
            scale, shift = bn_affine(self.bn.bn)
            h = F.linear(x, self.fc.weight * scale.unsqueeze(1), shift)
        else:
            h = self.bn(self.fc(x))
        return F.glu(h, dim=-1)


class GLUBlock(nn.Module):
    """n_glu GLU layers with sqrt(0.5)-scaled residuals (none around the first if ``first``)."""

    def __init__(self, input_dim: int, output_dim: int, n_glu: int, first: bool = False,
                 shared_layers: Optional[nn.ModuleList] = None, virtual_batch_size: int = 256, momentum: float = 0.02):
        super().__init__()
        self.first = first
        self.n_glu = n_glu
        # Registered here (for the checkpoint layout) *and* used by the GLU layers.
        self.shared_layers = shared_layers
        self.glu_layers = nn.ModuleList()
        for i in range(n_glu):
            fc = shared_layers[i] if shared_layers is not None else None
            in_dim = input_dim if i == 0 else output_dim
            self.glu_layers.append(GLULayer(in_dim, output_dim, fc, virtual_batch_size, momentum))

    def forward(self, x: torch.Tensor | MaskedInput) -> torch.Tensor:
        if isinstance(x, (MaskedInput, *BN_INPUTS)) and not self.first:
            x = x.dense()  # a residual needs the dense input
        start = 0
        if self.first:
            x = self.glu_layers[0](x)
            start = 1
        for layer in self.glu_layers[start:]:
            x = (x + layer(x)) * _SQRT_HALF
        return x


class FeatTransformer(nn.Module):
    """Shared GLU block (common to all steps) followed by a step-specific one."""

    def __init__(self, input_dim: int, output_dim: int, shared_layers: Optional[nn.ModuleList], n_independent: int,
                 virtual_batch_size: int = 256, momentum: float = 0.02):
        super().__init__()
        if shared_layers is None or len(shared_layers) == 0:
            self.shared = nn.Identity()
            spec_first, spec_in = True, input_dim
        else:
            self.shared = GLUBlock(
                input_dim,
                output_dim,
                n_glu=len(shared_layers),
                first=True,
                shared_layers=shared_layers,
                virtual_batch_size=virtual_batch_size,
                momentum=momentum,
            )
            spec_first, spec_in = False, output_dim
        if n_independent == 0:
            self.specifics = nn.Identity()
        else:
            self.specifics = GLUBlock(
                spec_in,
                output_dim,
                n_glu=n_independent,
                first=spec_first,
                virtual_batch_size=virtual_batch_size,
                momentum=momentum,
            )

    def forward(self, x: torch.Tensor | MaskedInput) -> torch.Tensor:
        x = self.shared(x)
        if isinstance(x, (MaskedInput, *BN_INPUTS)) and not isinstance(self.specifics, GLUBlock):
            x = x.dense()  # only Identity blocks: nothing consumed the input
        return self.specifics(x)


def _make_selector(mask_type: str) -> nn.Module:
    if mask_type == "entmax":
        return Entmax15(dim=-1)
    if mask_type == "sparsemax":
        return Sparsemax(dim=-1)
    raise ValueError(f"unknown mask_type {mask_type!r}; expected one of {MASK_TYPES}")


class AttentiveTransformer(nn.Module):
    """Feature mask = entmax(ghostBN(fc(a)) * prior) over the input genes."""

    def __init__(self, input_dim: int, output_dim: int, virtual_batch_size: int = 256, momentum: float = 0.02,
                 mask_type: str = "entmax"):
        super().__init__()
        self.selector = _make_selector(mask_type)
        self.fc = nn.Linear(input_dim, output_dim, bias=False)
        _init_plain_fc(self.fc, input_dim, output_dim)
        self.bn = GhostBatchNorm(output_dim, virtual_batch_size, momentum)

    def forward(self, prior: Optional[torch.Tensor], att: torch.Tensor) -> torch.Tensor:
        return self.forward_with_info(prior, att)[0]

    def forward_with_info(self, prior: Optional[torch.Tensor], att: torch.Tensor, materialize: bool = True):
        """Mask and the solver's :class:`SolveInfo` (where each row's support lies).

        ``materialize=False`` (fast path, inference): the mask is None and its non-zeros are in the info."""
        if not self.training:  # eval BN is affine: fold it into the Linear
            scale, shift = bn_affine(self.bn.bn)
            x = F.linear(att, self.fc.weight * scale.unsqueeze(1), shift)
        else:
            x = self.bn(self.fc(att))
        if prior is not None:  # prior None == all ones (first step): skip a full pass
            x = x * prior
        if x.dtype in (torch.float16, torch.bfloat16):
            x = x.float()  # entmax (its support, its gradient) in float32 under every precision
        if not materialize:
            return None, self.selector.solve(x)
        return self.selector.forward_with_info(x)


class TabNetEncoder(nn.Module):
    """Initial BN, initial splitter, then n_steps of (attention mask -> feature transformer). Built by
    :class:`TabNet`, whose signature holds the defaults (the paper's)."""

    def __init__(self, input_dim: int, output_dim: int, *, n_d: int, n_a: int, n_steps: int, gamma: float,
                 n_independent: int, n_shared: int, epsilon: float, virtual_batch_size: int, momentum: float,
                 mask_type: str):
        super().__init__()
        if n_steps < 1:
            raise ValueError(f"n_steps must be a positive integer, got {n_steps}")
        if n_independent < 0 or n_shared < 0 or n_independent + n_shared == 0:
            raise ValueError(
                f"need n_shared >= 0, n_independent >= 0, not both zero "
                f"(got n_shared={n_shared}, n_independent={n_independent})"
            )
        if mask_type not in MASK_TYPES:
            raise ValueError(f"unknown mask_type {mask_type!r}; expected one of {MASK_TYPES}")
        self.input_dim = input_dim
        self.output_dim = output_dim
        self.n_d, self.n_a = n_d, n_a
        self.n_steps = n_steps
        self.gamma = gamma
        self.epsilon = epsilon
        self.mask_type = mask_type
        #: this model's transposed first-layer weights for inference (see WeightTCache)
        self.weight_cache = WeightTCache()
        #: in eval on the CPU, a CSR input denser than this is written into a dense batch (DenseBNInput)
        #: instead of multiplied sparsely (SparseBNInput). The sparse product gathers one weight row per
        #: non-zero; at 19,331 genes and ~11% non-zeros the dense GEMM after scipy's densify costs less CPU
        #: (about 0.94-1.04 s against 1.16-1.20 s per 2,048 cells, whole forward pass, measured under load)
        self.csr_densify_above = CSR_DENSIFY_ABOVE

        self.initial_bn = nn.BatchNorm1d(input_dim, momentum=0.01)
        hidden = n_d + n_a
        # Deliberately a local (not an attribute of the encoder): the published
        # layout registers it only inside each feature transformer's shared block.
        shared: Optional[nn.ModuleList] = None
        if n_shared > 0:
            shared = nn.ModuleList()
            for i in range(n_shared):
                fan_in = input_dim if i == 0 else hidden
                fc = nn.Linear(fan_in, 2 * hidden, bias=False)
                _init_glu_fc(fc, fan_in, 2 * hidden)
                shared.append(fc)

        def feat_transformer() -> FeatTransformer:
            return FeatTransformer(
                input_dim, hidden, shared, n_independent, virtual_batch_size, momentum
            )

        self.initial_splitter = feat_transformer()
        self.feat_transformers = nn.ModuleList([feat_transformer() for _ in range(n_steps)])
        self.att_transformers = nn.ModuleList(
            [
                AttentiveTransformer(n_a, input_dim, virtual_batch_size, momentum, mask_type)
                for _ in range(n_steps)
            ]
        )

    # the weights' storage, dtype or device may change, or new values arrive: the cached copies go
    def _apply(self, *args, **kwargs):
        self.weight_cache.clear()
        return super()._apply(*args, **kwargs)

    def _load_from_state_dict(self, *args, **kwargs):
        self.weight_cache.clear()
        return super()._load_from_state_dict(*args, **kwargs)

    def train(self, mode: bool = True):
        if mode:  # training changes the weights: drop the inference copies (eval() again keeps them: a
            self.weight_cache.clear()  # classifier calls it before every block it predicts)
        return super().train(mode)

    def forward(
        self, x: torch.Tensor, return_masks: bool = False
    ) -> Tuple[List[torch.Tensor], torch.Tensor] | Tuple[List[torch.Tensor], torch.Tensor, List[torch.Tensor]]:
        if x.layout == torch.sparse_csr:
            if self.training and TrainBNInput.usable(x):
                x = first = TrainBNInput(csr_to_dense(x), self.initial_bn)  # batch statistics need the dense x
            elif self.training:
                x = csr_to_dense(x)
                x = self.initial_bn(x)
                first = x
            elif x.device.type == "cpu" and x.values().numel() > self.csr_densify_above * x.shape[0] * x.shape[1]:
                x = first = DenseBNInput(csr_to_dense(x), self.initial_bn, self.weight_cache)
            else:
                x = first = SparseBNInput(x, self.initial_bn, self.weight_cache)
        elif x.layout != torch.strided:
            raise ValueError(f"TabNet takes a dense or sparse CSR input, got layout {x.layout}")
        elif not self.training:
            x = first = DenseBNInput(x, self.initial_bn, self.weight_cache)
        elif TrainBNInput.usable(x):
            x = first = TrainBNInput(x, self.initial_bn)
        else:
            x = first = self.initial_bn(x)
        att = self.initial_splitter(first)[:, self.n_d :]
        prior: Optional[torch.Tensor] = None
        m_loss = att.new_zeros(())
        steps_output, masks = [], []
        # inference that reads only the masks' non-zeros (the first layer, the entropy) skips the dense masks
        factored_ok = not self.training and not torch.is_grad_enabled() and not return_masks
        for step in range(self.n_steps):
            materialize = not (factored_ok and step + 1 == self.n_steps)  # a next step's prior needs it dense
            mask, info = self.att_transformers[step].forward_with_info(prior, att, materialize)
            # entropy sum(-M log(M + eps)), visiting only the support candidates
            m_loss = m_loss + support_entropy(mask, info, self.epsilon).mean()
            if step + 1 < self.n_steps:
                prior = (self.gamma - mask) if prior is None else (self.gamma - mask) * prior
            masked = MaskedInput(mask, x, info, self.weight_cache)
            out = self.feat_transformers[step](masked)
            steps_output.append(F.relu(out[:, : self.n_d]))
            att = out[:, self.n_d :]
            if return_masks:
                masks.append(mask)
        m_loss = m_loss / self.n_steps
        if return_masks:
            return steps_output, m_loss, masks
        return steps_output, m_loss


class TabNet(nn.Module):
    """scTab classifier: TabNet encoder + bias-free linear map of the summed decision outputs.

    Defaults are the paper's (n_d 128, n_a 64, n_shared 3, n_independent 5,
    n_steps 1, gamma 1.3, virtual_batch_size 256, momentum 0.02, entmax masks).
    ``lambda_sparse`` is not used in forward; it is kept so the trainer knows
    the weight of ``M_loss`` in ``CE + lambda_sparse * M_loss``.
    """

    def __init__(self, input_dim: int, output_dim: int, n_d: int = 128, n_a: int = 64, n_steps: int = 1,
                 gamma: float = 1.3, n_independent: int = 5, n_shared: int = 3, epsilon: float = 1e-15,
                 virtual_batch_size: int = 256, momentum: float = 0.02, mask_type: str = "entmax",
                 lambda_sparse: float = 1e-5):
        super().__init__()
        self.input_dim = input_dim
        self.output_dim = output_dim
        self.lambda_sparse = lambda_sparse
        arch = dict(n_d=n_d, n_a=n_a, n_steps=n_steps, gamma=gamma, n_independent=n_independent, n_shared=n_shared,
                    epsilon=epsilon, virtual_batch_size=virtual_batch_size, momentum=momentum, mask_type=mask_type)
        self.hparams = dict(input_dim=input_dim, output_dim=output_dim, **arch, lambda_sparse=lambda_sparse)
        self.encoder = TabNetEncoder(input_dim, output_dim, **arch)
        self.final_mapping = nn.Linear(n_d, output_dim, bias=False)
        _init_plain_fc(self.final_mapping, n_d, output_dim)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        steps_output, m_loss = self.encoder(x)
        return self.final_mapping(self._sum(steps_output)), m_loss

    @staticmethod
    def _sum(steps_output: List[torch.Tensor]) -> torch.Tensor:
        res = steps_output[0]
        for d in steps_output[1:]:
            res = res + d
        return res

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Summed decision-step output (the n_d-dim embedding before final_mapping)."""
        steps_output, _ = self.encoder(x)
        return self._sum(steps_output)

    def forward_masks(self, x: torch.Tensor) -> List[torch.Tensor]:
        """Attention masks of every step, each (cells, genes), rows summing to 1."""
        _, _, masks = self.encoder(x, return_masks=True)
        return masks
