"""Tensors are born on the device of their inputs: a source check that catches CPU-only tensors without a GPU.

A tensor factory (``torch.arange``, ``torch.zeros``, ``torch.tensor``, ...) without ``device=`` makes a CPU
tensor; combined with a model's CUDA tensors it fails on the first GPU forward pass, which no CPU test sees.
In the packages that run on the model's device (models, train, evaluate, annotation) every factory call must
either pass ``device=`` (``device="cpu"`` states a host tensor on purpose, e.g. a batch about to be pinned and
copied) or derive from a tensor (``torch.zeros_like(x)``, ``x.new_zeros(...)``: not factories, not flagged).
The checker is a plain function so that the planted examples below prove it catches what it should.

A second check keeps the training loop free of per-batch host synchronisations: no ``.item()`` inside a loop
over batches in :mod:`sctab.train.loop` (the running sums stay on the device until the epoch ends).
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.paths import SRC

PACKAGES = ("sctab/models", "sctab/train", "sctab/evaluate", "sctab/annotation")

#: torch functions that create a tensor from sizes or data, on the CPU unless told otherwise
FACTORIES = frozenset({
    "arange", "range", "linspace", "logspace", "zeros", "ones", "full", "empty", "empty_strided", "eye",
    "tensor", "as_tensor", "scalar_tensor", "asarray", "rand", "randn", "randint", "randperm", "normal",
    "tril_indices", "triu_indices", "sparse_coo_tensor", "sparse_csr_tensor", "sparse_csc_tensor",
    "sparse_bsr_tensor", "sparse_bsc_tensor", "sparse_compressed_tensor",
})


def _torch_factory(call: ast.Call, torch_names: set[str], imported: dict[str, str]) -> str | None:
    """The factory's name when ``call`` is ``torch.<factory>(...)`` (or a factory imported from torch)."""
    f = call.func
    if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) and f.value.id in torch_names:
        return f.attr if f.attr in FACTORIES else None
    if isinstance(f, ast.Name) and f.id in imported:
        return imported[f.id] if imported[f.id] in FACTORIES else None
    return None


def _passes_device(call: ast.Call) -> bool:
    for kw in call.keywords:
        if kw.arg == "device":
            return not (isinstance(kw.value, ast.Constant) and kw.value.value is None)
    return False


def device_violations(source: str, filename: str = "<source>") -> list[str]:
    """Every torch tensor factory call in ``source`` without ``device=``, as ``file:line: torch.name(...)``."""
    tree = ast.parse(source, filename)
    torch_names, imported = {"torch"}, {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            torch_names |= {a.asname or a.name for a in node.names if a.name == "torch"}
        elif isinstance(node, ast.ImportFrom) and node.module == "torch":
            imported.update({a.asname or a.name: a.name for a in node.names})
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            name = _torch_factory(node, torch_names, imported)
            if name is not None and not _passes_device(node):
                out.append(f"{filename}:{node.lineno}: torch.{name}(...) without device= (creates a CPU tensor; "
                           f"pass device=<input>.device, or derive it from a tensor: torch.*_like, x.new_*)")
    return sorted(out, key=lambda v: int(v.split(":")[1]))


def package_violations(src: Path = SRC, packages=PACKAGES) -> list[str]:
    out = []
    for pkg in packages:
        for path in sorted((src / pkg).rglob("*.py")):
            out += device_violations(path.read_text(), str(path.relative_to(src)))
    return out


def test_models_train_evaluate_annotation_create_tensors_on_their_inputs_device():
    bad = package_violations()
    assert not bad, "tensor factories without device=:\n" + "\n".join(bad)


def test_the_checker_scans_the_packages_that_run_on_the_device():
    scanned = [p for pkg in PACKAGES for p in (SRC / pkg).rglob("*.py")]
    assert len(scanned) > 30, scanned
    assert SRC / "sctab/models/tabnet.py" in scanned


def test_planted_arange_is_caught_and_the_device_correct_one_accepted():
    # the bug the issue names: index tensors of tabnet.py built on the CPU next to the model's device
    planted = ("import torch\n"
               "def rows(x, n):\n"
               "    r = torch.arange(n)\n"
               "    return x[r]\n")
    (hit,) = device_violations(planted, "planted.py")
    assert hit.startswith("planted.py:3: torch.arange")
    fixed = planted.replace("torch.arange(n)", "torch.arange(n, device=x.device)")
    assert device_violations(fixed, "fixed.py") == []


def test_planted_factories_in_every_spelling():
    src = ("import torch\n"
           "import torch as th\n"
           "from torch import zeros as z\n"
           "a = torch.zeros(3)\n"                      # 4: flagged
           "b = th.full((2,), 1.0)\n"                  # 5: flagged (aliased module)
           "c = z(2)\n"                                # 6: flagged (imported name)
           "d = torch.tensor([1.0], device=None)\n"    # 7: flagged (None is the CPU)
           "e = torch.sparse_csr_tensor(p, i, v)\n"    # 8: flagged
           "f = torch.zeros_like(a)\n"                 # derived from a: fine
           "g = a.new_zeros(3)\n"                      # derived from a: fine
           "h = torch.as_tensor(arr, device='cpu')\n"  # a host tensor on purpose: fine
           "k = torch.ones(2, device=a.device)\n")     # fine
    lines = [int(v.split(":")[1]) for v in device_violations(src)]
    assert lines == [4, 5, 6, 7, 8]


# ------------------------------------------------------------------------------- per-batch synchronisation
def item_calls_in_batch_loops(source: str, filename: str = "<source>") -> list[str]:
    """``.item()`` calls inside ``for ... in <loader>`` loops (each one waits for the device)."""
    out = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, (ast.For, ast.AsyncFor)) and isinstance(node.target, ast.Name) \
                and node.target.id in ("batch", "b", "xb"):
            for inner in ast.walk(node):
                if isinstance(inner, ast.Call) and isinstance(inner.func, ast.Attribute) \
                        and inner.func.attr == "item" and not inner.args:
                    out.append(f"{filename}:{inner.lineno}: .item() in the batch loop")
    return out


def test_the_training_loop_does_not_synchronise_per_batch():
    path = SRC / "sctab/train/loop.py"
    assert item_calls_in_batch_loops(path.read_text(), "loop.py") == []
    planted = "for batch in loader:\n    total += loss.item()\n"
    assert item_calls_in_batch_loops(planted) == ["<source>:2: .item() in the batch loop"]
