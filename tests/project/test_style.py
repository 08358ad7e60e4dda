"""The code passes the project's linter (ruff, settings in pyproject.toml [tool.ruff])."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from tests.paths import REPO_ROOT as REPO


def test_ruff_is_clean():
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    assert ruff, "ruff is not installed: it is in the project's test extra (pip install -e '.[test]')"
    r = subprocess.run([ruff, "check", "--no-cache", "--output-format", "concise", "src", "tests", "pipelines",
                        "benchmarks"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"ruff check found problems (fix them, or `ruff check --fix`):\n{r.stdout[-4000:]}"
