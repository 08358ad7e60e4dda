"""The reference TabNet: independent of the fast path, and the same model (layout, forward, gradients)."""

from __future__ import annotations

import ast
import copy
import json
from pathlib import Path

import pytest
import torch

import sctab.models.reference_tabnet as reference_module
from sctab.models import TabNet
from sctab.models.entmax import entmax15, sparsemax
from sctab.models.reference_tabnet import ReferenceTabNet, entmax15_by_sorting, sparsemax_by_sorting
from tests.paths import TEST_DATA

pytestmark = pytest.mark.usefixtures("torch_one_thread")

LAYOUT = TEST_DATA / "sctab_checkpoint_layout.json"
SMALL = dict(n_d=8, n_a=4, n_steps=2, n_shared=2, n_independent=2, virtual_batch_size=16)


def _data(n=64, genes=300, seed=0, density=0.3):
    gen = torch.Generator().manual_seed(seed)
    counts = torch.poisson(torch.rand(n, genes, generator=gen) * 3, generator=gen)
    counts = counts * (torch.rand(n, genes, generator=gen) < density)
    return torch.log1p(counts)


def _trained(genes=300, classes=7, **kw) -> TabNet:
    """A fast-path model with non-trivial batch-norm statistics and masks sharp enough for the top-k path."""
    torch.manual_seed(1)
    model = TabNet(genes, classes, **{**SMALL, **kw})
    for at in model.encoder.att_transformers:
        at.bn.bn.weight.data.fill_(4.0)
    model.train()
    with torch.no_grad():
        for s in range(3):
            model(_data(genes=genes, seed=10 + s))
    return model.eval()


def test_it_shares_no_code_with_the_fast_path():
    tree = ast.parse(Path(reference_module.__file__).read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert imported <= {"__future__", "math", "torch", "torch.nn", "torch.nn.functional"}, imported
    ref = ReferenceTabNet.like(_trained())
    fast_modules = ("sctab.models.tabnet", "sctab.models.entmax", "sctab.models.tabnet_inputs")
    for m in ref.modules():
        for cls in type(m).__mro__:
            assert cls.__module__ not in fast_modules, (type(m), cls)


@pytest.mark.parametrize("kw", [{}, dict(n_steps=1), dict(n_shared=0), dict(n_independent=0), dict(n_steps=3)])
def test_same_state_dict_layout(kw):
    fast, ref = TabNet(40, 5, **{**SMALL, **kw}), ReferenceTabNet(40, 5, **{**SMALL, **kw})
    assert {k: v.shape for k, v in fast.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}
    # parameters in the same order: gradients compare list against list
    assert [n for n, _ in fast.named_parameters()] == [n for n, _ in ref.named_parameters()]


@pytest.mark.skipif(not LAYOUT.exists(), reason="published layout not available")
def test_the_published_checkpoint_layout():
    layout = json.loads(LAYOUT.read_text())["state_dict"]
    with torch.device("meta"):
        ref = ReferenceTabNet(19331, 164)
    assert {"classifier." + k: list(v.shape) for k, v in ref.state_dict().items()} == layout


def test_entmax_and_sparsemax_by_sorting():
    gen = torch.Generator().manual_seed(0)
    scores = torch.randn(32, 200, generator=gen, dtype=torch.float64) * 3
    for ours, other in ((entmax15_by_sorting, entmax15), (sparsemax_by_sorting, sparsemax)):
        p = ours(scores)
        assert (p >= 0).all() and torch.allclose(p.sum(-1), torch.ones(32, dtype=torch.float64))
        assert ((p > 0).sum(-1) < 200).all()  # sparse
        torch.testing.assert_close(p, other(scores), atol=1e-12, rtol=0)
        assert torch.autograd.gradcheck(ours, (scores[:4, :20].clone().requires_grad_(),))
    assert torch.isfinite(torch.autograd.functional.jacobian(entmax15_by_sorting, scores[:2, :50])).all()


@pytest.mark.parametrize("mask_type", ["entmax", "sparsemax"])
@pytest.mark.parametrize("layout", ["dense", "csr"])
def test_eval_forward_equals_the_fast_path(mask_type, layout):
    model = _trained(mask_type=mask_type)
    ref = ReferenceTabNet.like(model)
    x = _data(seed=3)
    xin = x.to_sparse_csr() if layout == "csr" else x
    with torch.no_grad():
        logits, entropy = model(xin)
        ref_logits, ref_entropy = ref(x)
        torch.testing.assert_close(logits, ref_logits, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(entropy, ref_entropy, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(model.embed(xin), ref.embed(x), atol=1e-5, rtol=1e-5)
        for a, b in zip(model.forward_masks(x), ref.forward_masks(x)):
            torch.testing.assert_close(a, b, atol=5e-5, rtol=0)  # sharp masks: scores of ~100 in float32


def test_training_loss_gradients_and_statistics_equal_the_fast_path():
    base = _trained().train()
    x, y = _data(n=96, seed=4), torch.randint(0, 7, (96,))
    out = []
    for model in (copy.deepcopy(base), ReferenceTabNet.like(base)):
        logits, entropy = model(x)
        loss = torch.nn.functional.cross_entropy(logits, y) + 0.1 * entropy
        loss.backward()
        out.append((float(loss.detach()), {n: p.grad for n, p in model.named_parameters()},
                    {k: v for k, v in model.state_dict().items() if "running" in k}))
    (l_fast, g_fast, s_fast), (l_ref, g_ref, s_ref) = out
    assert abs(l_fast - l_ref) <= 1e-5
    assert g_fast.keys() == g_ref.keys()
    for name in g_fast:
        torch.testing.assert_close(g_fast[name], g_ref[name], atol=1e-5, rtol=1e-3, msg=name)
    for k in s_fast:
        torch.testing.assert_close(s_fast[k], s_ref[k], atol=1e-6, rtol=1e-5, msg=k)


def test_like_copies_weights_mode_and_rejects_a_wrong_layout():
    model = _trained()
    ref = ReferenceTabNet.like(model)
    assert not ref.training and torch.equal(ref.final_mapping.weight, model.final_mapping.weight)
    assert ReferenceTabNet.like(model.double()).final_mapping.weight.dtype == torch.float64
    with pytest.raises(RuntimeError):
        ReferenceTabNet(300, 7, **SMALL).load_state_dict(TabNet(300, 8, **SMALL).state_dict())
    with pytest.raises(ValueError, match="mask_type"):
        ReferenceTabNet(10, 2, mask_type="softmax")
