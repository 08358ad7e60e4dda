"""Every source through `dvc repro`, offline, with dvc.yaml as it is: a census-style profile reading a local SOMA
copy of the census, and a reference of .h5ad files written by `sctab params --profile reference --input ...`.

Each runs the DAG's data stages (census -> extract -> split -> store -> validate) in a throw-away copy of the
repository with the real `dvc`; a second `dvc repro` skips them, and a changed input file re-runs extract.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import small_params
from tests.paths import REPO_ROOT as REPO

DATA_STAGES = ("census", "extract", "split", "store", "validate")


def _run(args, cwd, check=True):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1",
           "PYTHONPATH": str(Path(cwd) / "src")}  # the copy's code, not the installed project's
    r = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    if check and r.returncode:
        raise AssertionError(f"{' '.join(map(str, args))} failed ({r.returncode}):\n{r.stdout[-3000:]}\n"
                             f"{r.stderr[-3000:]}")
    return r


def _copy_repo(dst: Path) -> Path:
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True,
                           text=True, check=True).stdout.split()
    for f in files:
        if (REPO / f).is_file() and not f.startswith(("data/", "models/", "mlruns/")):
            (dst / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / f, dst / f)
    return dst


def _commit(dst: Path) -> None:
    _run(["git", "init", "-q"], dst)
    _run(["git", "add", "-A"], dst)
    _run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"], dst)


def _shrink(params: dict) -> dict:
    small = small_params(Path("unused"))
    for section in ("filters", "store", "split"):
        params[section].update({k: v for k, v in small[section].items() if k in params[section]})
    return params


@pytest.mark.slow  # ~1 min each: dvc runs five stages in a fresh copy
def test_local_census_copy_runs_the_dag(tmp_path):
    """census.source cellxgene with census.uri a local SOMA folder (the embedded census written elsewhere)."""
    from sctab.census.synthetic import build_synthetic_census

    proj = _copy_repo(tmp_path / "repo")
    gen = small_params(proj / "census-copy" / "soma")
    build_synthetic_census(gen)
    params = yaml.safe_load((REPO / "conf/profiles/census-2023-05-15.yaml").read_text())
    params["census"].update({"version": None, "uri": "census-copy/soma", "data": "census-copy/soma",
                             "chunk_size": 4096})
    params = _shrink(params)
    (proj / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (proj / ".gitignore").write_text((proj / ".gitignore").read_text() + "\n/census-copy\n")
    _commit(proj)
    r = _run(["dvc", "repro", "census", "validate"], proj)
    assert "all checks passed" in r.stdout
    summary = json.loads((proj / "data/census/summary.json").read_text())
    assert summary["source"] == "cellxgene" and summary["uri"] == "census-copy/soma"
    assert (proj / "data/store/train/part.0.parquet").exists()
    again = _run(["dvc", "repro", "census", "validate"], proj)
    assert "Running stage" not in again.stdout


@pytest.mark.slow
def test_h5ad_reference_runs_the_dag(tmp_path, census_params):
    from tests.h5ad_export import export_datasets

    proj = _copy_repo(tmp_path / "repo")
    paths = export_datasets(census_params, proj / "data" / "reference")
    rel = [str(p.relative_to(proj)) for p in paths]
    _run([sys.executable, "-m", "sctab.cli", "params", "--profile", "reference",
          *[a for p in rel for a in ("--input", p)]], proj)
    params = yaml.safe_load((proj / "params.yaml").read_text())
    assert params["census"]["inputs"] == rel and params["census"]["data"] == "data/reference"
    (proj / "params.yaml").write_text(yaml.safe_dump(_shrink(params), sort_keys=False))
    (proj / ".gitignore").write_text((proj / ".gitignore").read_text() + "\n/data/reference\n")
    _commit(proj)
    r = _run(["dvc", "repro", "census", "validate"], proj)
    assert "all checks passed" in r.stdout
    report = json.loads((proj / "data/extract/filter_report.json").read_text())
    assert [Path(f["file"]).name for f in report["inputs"]] == [p.name for p in paths]
    assert report["genes"]["selected"] == census_params["synthetic"]["n_genes"]  # restrict_to_inputs
    again = _run(["dvc", "repro", "census", "validate"], proj)
    assert "Running stage" not in again.stdout
    # a changed input re-runs extract: DVC watches census.data
    paths[-1].write_bytes(paths[0].read_bytes())
    status = _run(["dvc", "status", "extract"], proj).stdout
    assert "data/reference" in status and "modified" in status


@pytest.mark.parametrize("stage", DATA_STAGES)
def test_data_stage_depends_on_the_source_data(stage):
    """Static: the stages that read the source's data depend on ${census.data}, the rest on what they read."""
    dvc = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"][stage]
    reads_source = stage in ("extract", "store")
    assert ("${census.data}" in dvc.get("deps", [])) == reads_source
    assert "data/census" not in dvc.get("deps", [])
