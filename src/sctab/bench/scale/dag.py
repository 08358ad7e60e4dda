"""dvc.yaml's stages as DVC renders them in a workspace, in DAG order, and the basis each stage scales with.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from sctab.bench.scale.sizes import SAMPLED, ScaleError

#: stages whose work is over the training split (the rest work on every cell that enters)
TRAIN_STAGES_PREFIX = "train_"
TRAIN_STAGES = {"augment", "pca", "tune"}


# ---------------------------------------------------------------------------------------------- stages


@dataclass(frozen=True)
class Stage:
    name: str
    cmd: str
    deps: tuple[str, ...]
    outs: tuple[str, ...]


def render_stages(workspace: Path) -> list[Stage]:
    """The stages of ``workspace``/dvc.yaml as DVC renders them there (``${...}`` from the stage's vars and
    the workspace's params.yaml), in DAG order (dvc.yaml's order where the DAG leaves a choice)."""
    from dvc.repo import Repo

    if not (workspace / ".dvc").exists():
        r = subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=workspace,
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise ScaleError(f"dvc init in {workspace} failed: {(r.stderr or r.stdout).strip()[-500:]}")
    repo = Repo(str(workspace))
    try:
        stages = []
        for st in repo.index.stages:
            if not getattr(st, "cmd", None):
                continue
            cmd = st.cmd if isinstance(st.cmd, str) else " && ".join(st.cmd)
            stages.append(Stage(st.name, cmd, tuple(d.def_path for d in st.deps),
                                tuple(o.def_path for o in st.outs)))
    finally:
        repo.close()
    return dag_order(stages)


def _under(path: str, out: str) -> bool:
    return path == out or path.startswith(out.rstrip("/") + "/")


def upstream(stages: list[Stage]) -> dict[str, set[str]]:
    """For each stage, the stages producing one of its dependencies (an out that is the dep or holds it)."""
    producers = {s.name: s.outs for s in stages}
    return {s.name: {p for p, outs in producers.items() if p != s.name
                     and any(_under(d, o) or _under(o, d) for d in s.deps for o in outs)} for s in stages}


def dag_order(stages: list[Stage]) -> list[Stage]:
    """A topological order, stable with respect to the given order."""
    need = upstream(stages)
    done: list[Stage] = []
    names: set[str] = set()
    left = list(stages)
    while left:
        ready = next((s for s in left if need[s.name] <= names), None)
        if ready is None:
            raise ScaleError(f"dvc.yaml has a dependency cycle among {[s.name for s in left]}")
        done.append(ready)
        names.add(ready.name)
        left.remove(ready)
    return done


def with_upstream(stages: list[Stage], wanted: list[str]) -> list[Stage]:
    """``wanted`` and every stage they depend on, directly or not, in DAG order."""
    known = {s.name for s in stages}
    unknown = [w for w in wanted if w not in known]
    if unknown:
        raise ScaleError(f"unknown stage(s) {', '.join(unknown)}; dvc.yaml has {', '.join(s.name for s in stages)}")
    need = upstream(stages)
    keep, todo = set(), list(wanted)
    while todo:
        n = todo.pop()
        if n not in keep:
            keep.add(n)
            todo.extend(need[n])
    return [s for s in stages if s.name in keep]


def basis(stage: str) -> str:
    """Which cell count a stage's cost is fitted on: ``train`` (training split), ``sample`` (the cells CellTypist
    trained on: the training cells unless its memory budget binds) or ``in`` (every cell)."""
    if stage == "train_celltypist":
        return "sample"
    return "train" if stage.startswith(TRAIN_STAGES_PREFIX) or stage in TRAIN_STAGES or stage in SAMPLED else "in"
