"""The committed dvc.lock describes the committed code: a fresh clone's `make repro` has nothing to re-run for a
code reason, and the models it registers carry a clean git commit.

DVC itself compares (`dvc status`): every dependency of a stage that is source (code under src/ and pipelines/,
conf/, params.yaml) must hash as the lock records it. Outputs of other stages are not compared (a clone has
none until it runs), nor is the `${census.data}` input of a reference profile.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from tests.paths import REPO_ROOT

SOURCE_PREFIXES = ("src/", "pipelines/", "conf/")
SOURCE_FILES = ("params.yaml",)


def is_source(path: str) -> bool:
    return path.startswith(SOURCE_PREFIXES) or path in SOURCE_FILES


def stale_source_deps(status: dict) -> dict[str, list[str]]:
    """Stage -> the source deps (or params) that `dvc status --json` reports changed."""
    out: dict[str, list[str]] = {}
    for stage, entries in status.items():
        for entry in entries if isinstance(entries, list) else []:
            changed = entry.get("changed deps", {}) if isinstance(entry, dict) else {}
            for path, what in changed.items():
                if is_source(path):
                    detail = ", ".join(f"{k} {v}" for k, v in what.items()) if isinstance(what, dict) else what
                    out.setdefault(stage, []).append(f"{path} ({detail})")
    return out


def test_the_check_names_changed_code_and_params_only():
    status = {"train_sctab": [{"changed deps": {"src/sctab/train": "modified", "data/store": "deleted",
                                                "params.yaml": {"models.sctab.lr": "modified"}}},
                              {"changed outs": {"models/sctab": "not in cache"}}],
              "census": [{"changed outs": {"data/census": "not in cache"}}]}
    assert stale_source_deps(status) == {"train_sctab": ["src/sctab/train (modified)",
                                                         "params.yaml (models.sctab.lr modified)"]}


def test_committed_lock_matches_the_code_in_the_tree(tmp_path):
    # a copy of the tracked files as committed (plus what is staged or edited), without any DVC output
    work = tmp_path / "repo"
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO_ROOT, check=True, capture_output=True).stdout
    for rel in filter(None, files.decode().split("\0")):
        src = REPO_ROOT / rel
        if src.is_file():
            (work / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, work / rel)
    subprocess.run(["git", "init", "-q"], cwd=work, check=True)
    dvc = Path(sys.executable).with_name("dvc")
    res = subprocess.run([str(dvc), "status", "--json"], cwd=work, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    stale = stale_source_deps(json.loads(res.stdout or "{}"))
    assert not stale, ("dvc.lock records other code or params than the tree holds, so a fresh clone re-runs "
                       "these stages and registers its models from code the lock does not describe; run `make "
                       "repro` from a clean checkout and commit its dvc.lock:\n"
                       + "\n".join(f"  {s}: {', '.join(d)}" for s, d in stale.items()))
