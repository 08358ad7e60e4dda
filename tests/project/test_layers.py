"""Layers that only point down: a module may import its own package and packages of lower tiers, nothing else.

The order (issue 16), lowest first; packages in one tier are siblings and do not import each other:

    0l  sctab.lazy                                 names of a package imported on first use
    0s  sctab.params_schema                        the typed params sections
    0a  sctab.config, sctab.io, sctab.security     stdlib, yaml, numpy only
    0p  sctab.provenance                           git state, machine and load of a run
    0b  sctab.console_tables, sctab.tracking            console tables, MLflow runs
    1   sctab.ontology
    2   sctab.census                               census access, extraction and the paper's filters
    3   sctab.data                                 split, store, loaders, augmentations, PCA
    3v  sctab.validate                             checks of the data stages' outputs
    4   sctab.models
    5   sctab.evaluate
    6   sctab.train
    7a  sctab.annotation
    7b  sctab.experiments, sctab.registry, sctab.bench
    8   sctab.cli, sctab (the package API)

Every import counts, also those inside functions: a hidden import is a dependency all the same. The checker
is a plain function so that the planted example below proves it catches what it should.
"""

from __future__ import annotations

from pathlib import Path

from tests.imports import import_graph, module_files
from tests.paths import SRC

TIERS: list[tuple[str, tuple[str, ...]]] = [
    ("0l", ("sctab.lazy",)),
    ("0s", ("sctab.params_schema",)),
    ("0a", ("sctab.allocator", "sctab.config", "sctab.io", "sctab.security")),
    ("0p", ("sctab.provenance",)),
    ("0b", ("sctab.console_tables", "sctab.tracking")),
    ("1", ("sctab.ontology",)),
    ("2", ("sctab.census",)),
    ("3", ("sctab.data",)),
    ("3v", ("sctab.validate",)),
    ("4", ("sctab.models",)),
    ("5", ("sctab.evaluate",)),
    ("6", ("sctab.train",)),
    ("7a", ("sctab.annotation",)),
    ("7b", ("sctab.experiments", "sctab.registry", "sctab.bench")),
    ("8", ("sctab.cli", "sctab")),
]


def unit_of(module: str, tiers=TIERS) -> tuple[int, str] | None:
    """(tier index, layered unit) of a module: the longest unit that is it or contains it.

    ``sctab`` itself (the package API, ``sctab/__init__.py``) matches only exactly, not as a prefix."""
    best = None
    for rank, (_, units) in enumerate(tiers):
        for u in units:
            if module == u or (module.startswith(u + ".") and u.count(".") >= 1):
                if best is None or len(u) > len(best[1]):
                    best = (rank, u)
    return best


def layer_violations(src: str | Path, package: str = "sctab", tiers=TIERS) -> list[str]:
    """Every import of a higher tier or of a same-tier sibling, as ``file:line: what``; [] when layered.

    A module that belongs to no unit is reported too, so that a new package cannot slip in unlayered."""
    src = Path(src)
    files = module_files(src, package)
    graph = import_graph(src, package)
    tier = {rank: name for rank, (name, _) in enumerate(tiers)}
    out = []
    for module, imports in sorted(graph.items()):
        here = unit_of(module, tiers)
        if here is None:
            out.append(f"{_rel(files[module], src)}: module {module} is in no layer (add its package to TIERS)")
            continue
        for imp in imports:
            there = unit_of(imp.target, tiers)
            if there is None or there[1] == here[1] or there[0] < here[0]:
                continue
            where = f"{_rel(imp.path, src)}:{imp.line}"
            if there[0] > here[0]:
                out.append(f"{where}: {module} (tier {tier[here[0]]}) imports {imp.target} of the higher tier "
                           f"{tier[there[0]]}")
            else:
                out.append(f"{where}: {module} imports {imp.target}, a sibling of the same tier {tier[here[0]]}")
    return out


def _rel(path: Path, src: Path) -> str:
    return str(path.relative_to(src.parent))


def test_the_checker_catches_an_upward_import(tmp_path):
    """A planted tree: a low module importing a higher one (inside a function, relatively) is named by line."""
    pkg = tmp_path / "src" / "toy"
    for d in ("base", "mid", "top"):
        (pkg / d).mkdir(parents=True)
        (pkg / d / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "base" / "util.py").write_text("import os\n\n\ndef f():\n    from ..top import app  # hidden, relative\n")
    (pkg / "mid" / "helper.py").write_text("from toy.base import util\n")
    (pkg / "top" / "app.py").write_text("from toy.base.util import f\nfrom toy.mid import helper\n")
    tiers = [("0", ("toy.base",)), ("1", ("toy.mid",)), ("2", ("toy.top",))]
    assert layer_violations(tmp_path / "src", "toy", tiers) == [
        "src/toy/__init__.py: module toy is in no layer (add its package to TIERS)",
        "src/toy/base/util.py:5: toy.base.util (tier 0) imports toy.top.app of the higher tier 2"]

    (pkg / "base" / "util.py").write_text("import os\n")
    tiers = [("0", ("toy.base",)), ("1", ("toy.mid", "toy.top")), ("2", ("toy",))]
    assert layer_violations(tmp_path / "src", "toy", tiers) == [
        "src/toy/top/app.py:2: toy.top.app imports toy.mid.helper, a sibling of the same tier 1"]

    # a name a package imports lazily (`_LAZY`, as sctab's packages do) counts as an import of its module
    (pkg / "top" / "__init__.py").write_text('_LAZY = {"run": "toy.top.app"}\n')
    (pkg / "base" / "util.py").write_text("from toy.top import run\n")
    graph = import_graph(tmp_path / "src", "toy")
    assert [i.target for i in graph["toy.base.util"]] == ["toy.top.app"]


def test_sctab_layers_only_point_down():
    violations = layer_violations(SRC)
    assert not violations, "imports against the layer order of tests/project/test_layers.py:\n" + "\n".join(violations)


def test_every_package_lists_its_api():
    """Each package's __init__ says what it offers (``__all__``), and every name there resolves."""
    import ast
    import importlib

    missing, broken = [], []
    for module, path in sorted(module_files(SRC, "sctab").items()):
        if path.name != "__init__.py":
            continue
        tree = ast.parse(path.read_text())
        if not any(isinstance(n, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in n.targets)
                   for n in tree.body):
            missing.append(f"{_rel(path, SRC)}: {module} has no __all__")
            continue
        mod = importlib.import_module(module)
        broken += [f"{module}.{name}" for name in mod.__all__ if not hasattr(mod, name)]
    assert not broken, f"names in __all__ that do not resolve: {broken}"
    assert not missing, "packages that do not list their API:\n" + "\n".join(missing)
