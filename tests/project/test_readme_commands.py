"""Every command in README.md's code blocks still exists and takes the arguments it is shown with.

Long commands are dry-run: a `make` line through `make -n` (the target must exist and expand), then every
command the recipe would run through its own `--help`, which must accept it and list each `--flag` used;
`dvc repro <stages>` names stages of dvc.yaml. Python blocks must compile and import what they name.
"""

from __future__ import annotations

import ast
import importlib
import re
import shlex
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest
import yaml

from tests.paths import REPO_ROOT as REPO

VENV = Path(sys.executable).parents[1]
BIN = VENV / "bin"
pytestmark = pytest.mark.slow  # ~40 --help calls


def blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) of every fenced code block."""
    return re.findall(r"^```(\w*)\n(.*?)^```", text, re.S | re.M)


def shell_lines(body: str) -> list[str]:
    """Commands of a shell block: continuation lines joined, comments dropped, `a && b` split."""
    out = []
    for line in re.sub(r"\\\n\s*", " ", body).splitlines():   # continuation lines joined
        line = re.sub(r"(^|\s)#.*$", "", line).strip()
        out += [part.strip() for part in line.split("&&") if part.strip()]
    return out


README = (REPO / "README.md").read_text()
SHELL = [c for lang, b in blocks(README) if lang in ("bash", "sh", "") for c in shell_lines(b)]
PYTHON = [b for lang, b in blocks(README) if lang == "python"]
STAGES = set(yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"])


@cache
def _help(argv: tuple[str, ...]) -> str:
    r = subprocess.run([*argv, "--help"], cwd=REPO, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, f"{' '.join(argv)} --help failed:\n{r.stdout[-1500:]}{r.stderr[-1500:]}"
    return r.stdout + r.stderr


def check_command(argv: list[str], shown: str) -> None:
    """One command a README line runs (directly or through make): it exists and takes its arguments."""
    while argv and re.match(r"^[A-Z_]+=", argv[0]):  # VAR=value prefixes
        argv = argv[1:]
    if not argv:
        return
    tool = f"{BIN}/{argv[0][len('.venv/bin/'):]}" if argv[0].startswith(".venv/bin/") else argv[0]
    if not tool.startswith(str(BIN)):
        return  # shell helpers of a recipe (test, echo, if ...): not a project command
    assert Path(tool).exists(), f"{shown}: {tool} is not installed"
    name = Path(tool).name
    if name.startswith("python"):
        if argv[1] == "-m":
            head = (tool, "-m", argv[2])
        else:
            script = REPO / argv[1]
            assert script.exists(), f"{shown}: {argv[1]} is gone"
            head = (tool, str(script))
        rest = argv[len(head):] if argv[1] == "-m" else argv[2:]
    elif name == "dvc" and argv[1:2] == ["repro"]:
        stages = [a for a in argv[2:] if not a.startswith("-")]
        assert set(stages) <= STAGES, f"{shown}: no such stage {sorted(set(stages) - STAGES)} in dvc.yaml"
        head, rest = (tool, "repro"), argv[2:]
    else:
        cmd = [tool]
        for a in argv[1:]:
            if a.startswith("-") or any(ch in a for ch in "./=$@:"):
                break
            cmd.append(a)
        head, rest = tuple(cmd), argv[len(cmd):]
    text = _help(head)
    for flag in (a.split("=")[0] for a in rest if a.startswith("--")):
        assert re.search(rf"{re.escape(flag)}\b", text), f"{shown}: {' '.join(head)} has no option {flag}"


def make_commands(line: str) -> list[list[str]]:
    """What `make <target> VAR=...` would run (make -n), the venv's own installation left out."""
    args = shlex.split(line)[1:]
    targets = [a for a in args if "=" not in a]
    r = subprocess.run(["make", "-n", "-s", "-C", str(REPO), f"VENV={VENV}", *args], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, f"`{line}`: {r.stderr[-1500:]}"
    assert targets, line
    out = []
    for cmd in r.stdout.splitlines():
        cmd = cmd.strip()
        if not cmd or cmd.startswith("#") or "pip install" in cmd or cmd.startswith(("python3 -m venv", "touch ")):
            continue
        try:
            out.append(shlex.split(cmd))
        except ValueError:
            continue  # a multi-line shell construct of a recipe (if ...; then)
    return out


def test_readme_has_commands():
    assert any(c.startswith("make repro") for c in SHELL) and any(c.startswith("make serve") for c in SHELL)
    assert PYTHON


@pytest.mark.parametrize("line", SHELL)
def test_readme_command(line):
    if line.startswith("make "):
        for argv in make_commands(line):
            check_command(argv, line)
    else:
        check_command(shlex.split(line.replace(" ... ", " ")), line)


@pytest.mark.parametrize("code", PYTHON, ids=lambda c: c.strip().splitlines()[0][:40])
def test_readme_python(code):
    import textwrap

    tree = ast.parse(textwrap.dedent(code))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            mod = importlib.import_module(node.module)
            for alias in node.names:
                assert hasattr(mod, alias.name) or importlib.util.find_spec(f"{node.module}.{alias.name}"), \
                    f"{node.module} has no {alias.name}"
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "sctab":
            assert hasattr(importlib.import_module("sctab"), node.attr), f"sctab has no {node.attr}"


def test_a_gone_target_or_option_fails():
    """The checks catch what they should: a make target that is not there, an option a command lacks."""
    with pytest.raises(AssertionError):
        make_commands("make no-such-target")
    with pytest.raises(AssertionError, match="no option --no-such-flag"):
        check_command([f"{BIN}/sctab", "models", "--no-such-flag"], "x")
    with pytest.raises(AssertionError, match="no such stage"):
        check_command([f"{BIN}/dvc", "repro", "train_nothing"], "x")
