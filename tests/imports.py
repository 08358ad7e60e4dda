"""The import graph of a source tree, read with ``ast`` (nothing is imported or run).

Every import counts: module level, inside functions, under ``if TYPE_CHECKING`` and relative ones, because a
hidden import is still a dependency (of a layer, of a DVC stage). Used by project/test_layers.py and
project/test_dvc_deps.py.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Import:
    """``source`` (a module of the tree) imports ``target`` (a dotted name, maybe outside it) at ``path:line``."""

    source: str
    target: str
    path: Path
    line: int


def module_files(src: str | Path, package: str) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` under ``src/<package>`` (a package is its ``__init__``)."""
    src = Path(src)
    out = {}
    for f in sorted((src / package).rglob("*.py")):
        parts = list(f.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = f
    return out


def _resolve(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    """The absolute module named by ``from <dots><name> import ...`` written in ``module``."""
    if not node.level:
        return node.module or ""
    base = module.split(".")
    if not is_package:
        base = base[:-1]
    base = base[:len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def lazy_names(path: Path) -> dict[str, str]:
    """A package's ``_LAZY = {"name": "module", ...}``: names its ``__getattr__`` imports on first use."""
    for node in ast.parse(path.read_text(), filename=str(path)).body:
        if (isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "_LAZY" for t in node.targets)
                and isinstance(node.value, ast.Dict)):
            return {k.value: v.value for k, v in zip(node.value.keys, node.value.values)
                    if isinstance(k, ast.Constant) and isinstance(v, ast.Constant)}
    return {}


def file_imports(path: Path, module: str, known: set[str], lazy: dict[str, dict[str, str]] | None = None
                 ) -> list[Import]:
    """Every import statement of one file, resolved to absolute names.

    ``from pkg import name`` targets ``pkg.name`` when that is a module of the tree (a submodule import), the
    module that defines ``name`` when ``pkg`` imports it lazily (``lazy[pkg]``, see lazy_names), else ``pkg``.
    """
    tree = ast.parse(path.read_text(), filename=str(path))
    is_package = path.name == "__init__.py"
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [Import(module, alias.name, path, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(node, module, is_package)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                target = sub if sub in known else (lazy or {}).get(base, {}).get(alias.name, base)
                out.append(Import(module, target, path, node.lineno))
    return out


def import_graph(src: str | Path, package: str) -> dict[str, list[Import]]:
    """Module -> its imports of other modules of the same top-level package."""
    files = module_files(src, package)
    known = set(files)
    lazy = {mod: lazy_names(path) for mod, path in files.items() if path.name == "__init__.py"}
    graph = {}
    for mod, path in files.items():
        imports = [i for i in file_imports(path, mod, known, lazy)
                   if i.target == package or i.target.startswith(package + ".")]
        graph[mod] = list(dict.fromkeys(imports))  # `from m import a, b` is one import of m
    return graph


def _owner(name: str, known: set[str]) -> str | None:
    """The longest known module that ``name`` is or lies in (``a.b.C`` -> ``a.b`` when that is a module)."""
    while name:
        if name in known:
            return name
        name = name.rpartition(".")[0]
    return None


def closure(graph: dict[str, list[Import]], roots: list[str]) -> set[str]:
    """Every module that importing ``roots`` may run: their imports, transitively, and the parent packages
    (``import a.b.c`` runs ``a/__init__`` and ``a/b/__init__`` first)."""
    known = set(graph)
    seen: set[str] = set()
    todo = [m for m in (_owner(r, known) for r in roots) if m]
    while todo:
        mod = todo.pop()
        if mod in seen:
            continue
        seen.add(mod)
        parts = mod.split(".")
        todo += [p for p in (".".join(parts[:i]) for i in range(1, len(parts))) if p in known]
        todo += [m for m in (_owner(i.target, known) for i in graph[mod]) if m]
    return seen


def script_imports(script: Path, src: str | Path, package: str) -> list[str]:
    """The modules of ``package`` (under ``src``) that a script, e.g. a pipeline stage, imports directly."""
    files = module_files(src, package)
    lazy = {mod: lazy_names(path) for mod, path in files.items() if path.name == "__init__.py"}
    return [i.target for i in file_imports(script, "__main__", set(files), lazy)
            if i.target == package or i.target.startswith(package + ".")]


def dep_path(module: str, files: dict[str, Path], src: Path) -> str:
    """The path a DVC stage should depend on to see every change of ``module``: its top-level package folder
    (``sctab.data.store`` -> ``src/sctab/data``), or the file of a top-level module (``src/sctab/config.py``)."""
    parts = module.split(".")
    if len(parts) >= 2 and (src / parts[0] / parts[1]).is_dir():
        return "/".join([src.name, parts[0], parts[1]])
    return str(files[module].relative_to(src.parent))
