"""sctab.provenance: "dirty" means changed source, and every results header spells the run the same way."""

import subprocess

import pytest

from sctab import provenance
from sctab.bench.summary import HEADER, MD_HEADER


def _git(cwd, *args):
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True,
                   env={"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
                        "GIT_COMMITTER_EMAIL": "t@t", "PATH": "/usr/bin:/bin"})


@pytest.fixture
def checkout(tmp_path):
    for rel in ("src/sctab/x.py", "pipelines/p.py", "conf/c.yaml", "params.yaml", "dvc.yaml", "dvc.lock",
                "reports/evaluate/metrics.json", "benchmarks/results/r.md", "benchmarks/run.py", "README.md"):
        f = tmp_path / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text("a\n")
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "add", ".")
    _git(tmp_path, "commit", "-q", "-m", "x")
    return tmp_path


def test_what_dvc_repro_rewrites_leaves_the_commit_clean(checkout):
    sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=checkout, capture_output=True, text=True).stdout.strip()
    for rel in ("dvc.lock", "reports/evaluate/metrics.json", "benchmarks/results/r.md", "README.md"):
        (checkout / rel).write_text("rewritten\n")
    (checkout / "untracked.py").write_text("new\n")
    state = provenance.git_state(checkout)
    assert state.sha == sha and not state.dirty
    assert provenance.git_commit(checkout) == sha
    assert provenance.git_commit(checkout / "src", short=True) == sha[:10]   # any folder inside the checkout


@pytest.mark.parametrize("rel", ["src/sctab/x.py", "pipelines/p.py", "conf/c.yaml", "params.yaml", "dvc.yaml",
                                 "benchmarks/run.py"])
def test_a_changed_source_path_marks_it_dirty(checkout, rel):
    (checkout / rel).write_text("changed\n")
    state = provenance.git_state(checkout)
    assert state.changed == (rel,)
    assert provenance.git_commit(checkout).endswith("-dirty")


def test_outside_a_checkout_says_unknown(tmp_path):
    assert provenance.git_commit(tmp_path) == "unknown"


def test_tracked_runs_use_the_same_label(checkout):
    from sctab.tracking import git_commit

    (checkout / "dvc.lock").write_text("rewritten\n")
    assert git_commit(checkout) == provenance.git_commit(checkout) and "-dirty" not in git_commit(checkout)


def test_run_record_writes_the_header_the_summary_reads(checkout):
    run = provenance.RunRecord.start("benchmarks/run.py", ["--quick", "a b"], root=checkout)
    rec = run.as_dict()
    assert set(HEADER) <= set(rec)
    assert rec["command"] == "benchmarks/run.py --quick 'a b'"
    assert len(rec["load_start"]) == 3 and rec["wall_s"] >= 0
    text = run.command_text()
    assert text.startswith(MD_HEADER["command"]) and MD_HEADER["commit"] in text
    assert "load average" in run.load_summary() and "CPU cores" in provenance.machine_text()
