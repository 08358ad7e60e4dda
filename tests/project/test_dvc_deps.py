"""dvc.yaml that cannot drift: a stage is out of date as soon as any code its script runs has changed.

The fast test checks dvc.yaml statically: every sctab module that a stage's script imports (transitively, also
from inside functions) lies under one of the stage's deps, and no sctab dep is one the script never reaches.
The slow one asks DVC itself: in a copy of the repository whose stages are committed on stand-in outputs
(`dvc commit -f`, nothing is run), it edits each such module in turn and checks that `dvc status` names every
stage that runs it.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.imports import closure, dep_path, import_graph, module_files, script_imports
from tests.paths import REPO_ROOT as REPO

PACKAGE = "sctab"


@dataclass
class Stage:
    script: Path
    deps: list[str]
    outs: list[str]
    params: list[str]


def stages(root: Path) -> dict[str, Stage]:
    """Stage name -> its script, deps, outs and params as DVC resolves dvc.yaml (vars, merge keys and all)."""
    from dvc.dependency.param import ParamsDependency
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        out = {}
        for st in repo.index.stages:
            scripts = [t for t in shlex.split(st.cmd) if t.startswith("pipelines/") and t.endswith(".py")]
            assert len(scripts) == 1, f"stage {st.name}: expected one pipelines/*.py script in {st.cmd!r}"
            params = [k for d in st.deps if isinstance(d, ParamsDependency) for k in d.params]
            deps = [d.def_path for d in st.deps if not isinstance(d, ParamsDependency)]
            out[st.name] = Stage(root / scripts[0], deps, [o.def_path for o in st.outs], params)
        return out


def stage_modules(root: Path, found: dict[str, Stage]) -> dict[str, set[str]]:
    """Stage name -> the sctab modules its script may run."""
    src = root / "src"
    graph = import_graph(src, PACKAGE)
    return {name: closure(graph, script_imports(st.script, src, PACKAGE)) for name, st in found.items()}


def _covered(path: str, deps: list[str]) -> bool:
    return any(path == d or path.startswith(d.rstrip("/") + "/") for d in deps)


def test_every_stage_depends_on_the_code_it_runs():
    src = REPO / "src"
    files = module_files(src, PACKAGE)
    found = stages(REPO)
    modules = stage_modules(REPO, found)
    assert all("sctab.config" in mods for mods in modules.values()), "every stage script reads params.yaml"
    missing, extra = [], []
    for name, st in found.items():
        script, deps = st.script, st.deps
        rel = str(script.relative_to(REPO))
        if rel not in deps:
            missing.append(f"{name}: its script {rel}")
        needed = {dep_path(m, files, src) for m in modules[name]}
        for m in sorted(modules[name]):
            f = str(files[m].relative_to(REPO))
            if not _covered(f, deps):
                missing.append(f"{name}: {f} ({m}); add {dep_path(m, files, src)}")
        for d in deps:
            if d.startswith(f"src/{PACKAGE}") and d not in needed:
                extra.append(f"{name}: {d}")
    assert not missing, "dvc.yaml: stages run code they do not depend on:\n" + "\n".join(missing)
    assert not extra, ("dvc.yaml: stages depend on sctab code their script never imports (remove it, or the "
                       "stage re-runs for nothing):\n" + "\n".join(extra))


def test_the_five_training_stages_share_one_definition():
    """Their names stay train_<model> (DVC's foreach would make them train@<model>); the body is written once."""
    text = (REPO / "dvc.yaml").read_text()
    assert "  train_linear: &train\n" in text
    for model in ("mlp", "sctab", "xgboost", "celltypist"):
        assert f"  train_{model}:\n    <<: *train\n" in text, model
    found = stages(REPO)
    for model in ("linear", "mlp", "sctab", "xgboost", "celltypist"):
        st = found[f"train_{model}"]
        assert st.script == REPO / "pipelines" / "train.py"
        assert st.outs == [f"models/{model}", f"reports/train/{model}.json"]


# ------------------------------------------------------------------------------------------------- slow probe
def _git(args, cwd):
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True)


def _stand_in(path: Path) -> None:
    """A file for names with a suffix, a folder with one file otherwise; what is there already stays."""
    if path.exists():
        return
    if path.suffix:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("{}\n")
    else:
        path.mkdir(parents=True)
        (path / "stand-in").write_text("stand-in\n")


def _stand_in_params(root: Path, keys: list[str]) -> None:
    """A params.yaml with only the keys the stages track, each a scalar: DVC parses it once per params dependency
    and status (pure-Python YAML), which for the real file is most of the time a status takes."""
    import yaml

    tree: dict = {}
    for key in sorted(set(keys), key=lambda k: -k.count(".")):
        *parents, leaf = key.split(".")
        node = tree
        for p in parents:
            node = node.setdefault(p, {})
        node.setdefault(leaf, "stand-in")
    # values dvc.yaml interpolates (${census.data}) keep their real value: a path the stages name
    real = yaml.safe_load((REPO / "params.yaml").read_text())
    for key in sorted(set(re.findall(r"\$\{([a-z_.]+)\}", (REPO / "dvc.yaml").read_text()))):
        *parents, leaf = key.split(".")
        node, value = tree, real
        for p in parents:
            if not isinstance(node.get(p), dict):
                node[p] = {}
            node, value = node[p], value[p]
        if isinstance(value, dict) and leaf in value:
            node[leaf] = value[leaf]
    (root / "params.yaml").write_text(yaml.safe_dump(tree))


def _changed(root: Path) -> set[str]:
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        return set(repo.status())


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_editing_any_module_a_stage_runs_makes_dvc_status_name_it(tmp_path, monkeypatch):
    from dvc.repo import Repo

    root = tmp_path / "repo"
    tracked = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True,
                             text=True, check=True).stdout.split()
    for f in tracked:
        if (REPO / f).is_file() and not f.startswith(("data/", "models/")):
            (root / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / f, root / f)
    (root / "dvc.lock").unlink(missing_ok=True)
    _git(["init", "-q"], root)
    monkeypatch.chdir(root)  # DVC's API resolves stage paths against the working directory
    found = stages(root)
    _stand_in_params(root, [k for st in found.values() for k in st.params])
    for st in found.values():
        for p in st.outs:
            _stand_in(root / p)
    for st in found.values():
        for p in st.deps:
            _stand_in(root / p)
    with Repo(str(root)) as repo:
        repo.commit(None, force=True)  # records every stage as run on what is there now
    assert _changed(root) == set(), "the stand-in workspace should be up to date right after `dvc commit -f`"

    src = root / "src"
    files = module_files(src, PACKAGE)
    runs: dict[Path, set[str]] = {}
    for name, mods in stage_modules(root, found).items():
        runs.setdefault(found[name].script, set()).add(name)
        for m in mods:
            runs.setdefault(files[m], set()).add(name)
    t0 = time.perf_counter()
    stale = []
    for path, expected in sorted(runs.items()):
        before = path.read_bytes()
        try:
            path.write_bytes(before + b"\n# probe: an edit dvc must notice\n")
            changed = _changed(root)
        finally:
            path.write_bytes(before)
        if expected - changed:
            stale.append(f"{path.relative_to(root)}: dvc status leaves {sorted(expected - changed)} clean")
    assert not stale, "edits that DVC does not see:\n" + "\n".join(stale)
    assert _changed(root) == set()
    print(f"{len(runs)} files probed in {time.perf_counter() - t0:.0f} s")
