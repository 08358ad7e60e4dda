"""A throw-away copy of the project for the end-to-end DVC tests (the ``project`` fixture is in conftest.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from tests.conftest import small_params
from tests.paths import REPO_ROOT as REPO


def run(args, cwd, check=True):
    """A command in ``cwd`` with this interpreter's bin first on PATH (DVC's `python`); AssertionError with its
    output when it fails and ``check``."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1"}
    r = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    if check and r.returncode:
        raise AssertionError(f"{' '.join(args)} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return r


def clone_project(dst: Path) -> Path:
    """A git clone of the working tree (tracked files as they are now) with a small census profile, at ``dst``."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True,
                           text=True, check=True).stdout.split()
    for f in files:
        if (REPO / f).is_file():
            (dst / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / f, dst / f)
    params = small_params(Path("data/census/soma"))
    header = "# test profile\n"
    (dst / "params.yaml").write_text(header + yaml.safe_dump(params, sort_keys=False))
    run(["git", "init", "-q"], dst)
    run(["git", "add", "-A"], dst)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"], dst)
    return dst
