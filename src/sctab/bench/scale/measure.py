"""Running one stage under a sampler of its whole process tree's memory (RSS and PSS), in a throw-away
workspace per size, and what each stage read and wrote.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import yaml

from sctab.bench.scale.dag import basis, render_stages, with_upstream
from sctab.bench.scale.sizes import REPO, ScaleError, Size, size_params
from sctab.params_schema import section

#: the bench stops before a stage when less than this is free where its workspace lies
MIN_FREE_DISK = 4 * 2**30


# ---------------------------------------------------------------------------------------------- measuring


def _tree(root: psutil.Process, marker: str | None) -> tuple[list[psutil.Process], int]:
    """The root, its descendants and (when ``marker`` is given) processes whose command line holds it; the
    second value counts those found only through the marker."""
    procs = {root.pid: root}
    try:
        for c in root.children(recursive=True):
            procs[c.pid] = c
    except psutil.NoSuchProcess:
        pass
    extra = 0
    if marker:
        for p in psutil.process_iter(["pid", "cmdline"]):
            if p.info["pid"] not in procs and marker in " ".join(p.info["cmdline"] or ()):
                procs[p.info["pid"]] = p
                extra += 1
    return list(procs.values()), extra


def _rss(procs: list[psutil.Process]) -> int:
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            pass
    return total


def _pss(procs: list[psutil.Process]) -> int:
    """Summed proportional set size: a page shared by n processes counts 1/n in each, so the sum is what the
    tree holds (the RSS sum counts Ray's shared libraries and object store pages once per process). A process
    whose smaps_rollup cannot be read counts its RSS."""
    total = 0
    for p in procs:
        try:
            with open(f"/proc/{p.pid}/smaps_rollup", "rb") as fh:
                for line in fh:
                    if line.startswith(b"Pss:"):
                        total += int(line.split()[1]) * 1024
                        break
        except OSError:
            total += _rss([p])
    return total


def run_measured(cmd: str, cwd: Path, env: dict, log: Path, marker: str | None = None,
                 interval: float = 0.2) -> dict:
    """Run ``cmd`` through the shell (as DVC does) and sample its process tree's summed RSS every ``interval``
    seconds. Returns wall seconds, the peak of the sum, the largest single process (the kernel's own high-water
    mark of the stage process and what it waited for, so peaks between samples are not missed for it, when
    it exceeds the launcher's size, which a forked child inherits; else the sampled largest process), the most
    processes at once, how many were found only through ``marker`` and the exit status. The peak of the summed
    PSS (``peak_pss_bytes``, what the tree really holds; never below the largest single process's figure)
    is what the fits use; the RSS sum is an upper bound reported beside it."""
    # a child started from the launcher inherits the launcher's high-water mark (its peak, not its current
    # size: the memory a vfork'd child shares until exec), so the kernel's figure says something only above
    # that peak; below it the sampled largest process counts
    launcher = max(psutil.Process().memory_info().rss, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    with open(log, "wb") as fh:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, shell=True, cwd=cwd, env=env, stdout=fh, stderr=subprocess.STDOUT)
        root = psutil.Process(proc.pid)
        peak = peak_pss = peak_n = by_marker = sampled_single = 0
        while True:
            procs, extra = _tree(root, marker)
            peak = max(peak, _rss(procs))
            peak_pss = max(peak_pss, _pss(procs))
            sampled_single = max([sampled_single] + [_rss([p]) for p in procs])
            peak_n = max(peak_n, len(procs))
            by_marker = max(by_marker, extra)
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            time.sleep(interval)
        wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    kernel = usage.ru_maxrss * 1024
    single = kernel if kernel > 1.05 * launcher else sampled_single
    return {"wall_s": wall, "peak_rss_bytes": max(peak, single), "peak_pss_bytes": max(peak_pss, single),
            "peak_single_bytes": single,
            "peak_procs": peak_n, "procs_by_marker": by_marker, "returncode": proc.returncode}


def _leftovers(marker: str) -> list[psutil.Process]:
    """Processes still naming the workspace's Ray temp dir after a stage ended (Ray daemons of our own)."""
    out = []
    for p in psutil.process_iter(["cmdline"]):
        if p.pid != os.getpid() and marker in " ".join(p.info["cmdline"] or ()):
            out.append(p)
    return out


def stop_leftovers(marker: str, wait_s: float = 10.0) -> int:
    """Give a stage's Ray daemons time to exit with it, then end the ones left, by pid."""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline and _leftovers(marker):
        time.sleep(0.5)
    left = _leftovers(marker)
    for p in left:
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(left, timeout=5)
    return len(left)


def stage_env(workspace: Path, ray_tmp: Path) -> dict:
    """The stages' environment: this checkout's code first, the interpreter's bin on PATH (DVC's `python`),
    MLflow tracking into the workspace, and a fresh local Ray per stage under the workspace's own temp dir."""
    env = dict(os.environ)
    for k in ("RAY_ADDRESS", "MLFLOW_REGISTRY_URI", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID"):
        env.pop(k, None)
    env["PYTHONPATH"] = os.pathsep.join(x for x in (str(REPO / "src"), env.get("PYTHONPATH")) if x)
    env["PATH"] = os.pathsep.join((str(Path(sys.executable).parent), env.get("PATH", "")))
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{workspace / 'mlruns' / 'mlflow.db'}"
    env["RAY_TMPDIR"] = str(ray_tmp)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def make_workspace(path: Path, params: dict) -> None:
    """A project folder: dvc.yaml, params.yaml, and the scripts and configuration the stages read."""
    path.mkdir(parents=True, exist_ok=True)
    shutil.copy2(REPO / "dvc.yaml", path / "dvc.yaml")
    for name in ("pipelines", "conf"):
        link = path / name
        if not link.exists():
            link.symlink_to(REPO / name, target_is_directory=True)
    (path / "params.yaml").write_text(f"# scale bench workspace (sctab.bench.scale), not a profile\n"
                                      f"{yaml.safe_dump(params, sort_keys=False)}")


def tree_bytes(path: Path) -> int:
    """Bytes on disk of a file or a folder's files (what the output costs on disk and in the DVC cache, which
    keeps one copy of each output); 0 when absent. Symlinks are not followed."""
    if path.is_symlink() or not path.exists():
        return 0
    if path.is_file():
        return path.stat().st_size
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            q = Path(root) / f
            if not q.is_symlink():
                total += q.stat().st_size
    return total


def counts(workspace: Path) -> dict:
    """Cells that entered (the census) and training cells (the store's train split), once written."""
    out = {"cells_in": None, "train_cells": None, "celltypist_cells": None}
    summary = workspace / "data" / "census" / "summary.json"
    if summary.exists():
        out["cells_in"] = int(json.loads(summary.read_text())["n_cells"])
    report = workspace / "data" / "store" / "store_report.json"
    if report.exists():
        out["train_cells"] = int(json.loads(report.read_text())["rows"]["train"])
    ct = workspace / "reports" / "train" / "celltypist.json"
    if ct.exists():  # the cells the fit trained on: fewer than the training cells where the memory budget binds
        out["celltypist_cells"] = json.loads(ct.read_text()).get("train_cells")
    return out


def run_size(size: Size, profile: dict, overrides: dict, stages_wanted: list[str] | None, root: Path,
             interval: float = 0.2, keep: bool = False, echo=print) -> list[dict]:
    """Every (wanted) stage on one size in a fresh workspace under ``root``; one row per stage."""
    ws = root / size.label
    if ws.exists():
        shutil.rmtree(ws)
    params = size_params(profile, size, overrides)
    make_workspace(ws, params)
    stages = render_stages(ws)
    if stages_wanted:
        stages = with_upstream(stages, stages_wanted)
    # short: Ray's socket paths under it must stay below the 107-byte limit of AF_UNIX
    ray_tmp = Path(tempfile.mkdtemp(prefix="scray-", dir="/tmp"))
    env = stage_env(ws, ray_tmp)
    (ws / "logs").mkdir(exist_ok=True)
    rows = []
    try:
        for st in stages:
            free = shutil.disk_usage(ws).free
            if free < MIN_FREE_DISK:
                raise ScaleError(f"only {free / 2**30:.1f} GiB free on the disk of {ws} before stage {st.name} at "
                                 f"size {size.label} (the bench stops below {MIN_FREE_DISK / 2**30:.0f} GiB); "
                                 "pick smaller sizes or a --workdir on a larger disk")
            echo(f"[{size.label}] {st.name} ...")
            log = ws / "logs" / f"{st.name}.log"
            res = run_measured(st.cmd, ws, env, log, marker=str(ray_tmp), interval=interval)
            res["ray_left"] = stop_leftovers(str(ray_tmp))
            if res["returncode"] != 0:
                tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
                raise ScaleError(f"stage {st.name} failed at size {size.label} (exit {res['returncode']}; "
                                 f"log {log}):\n{tail}")
            outs = {o: tree_bytes(ws / o) for o in st.outs}
            rows.append({"size": size.label, "factor": size.factor,
                         "n_genes": section(params, "synthetic.n_genes"), "stage": st.name,
                         "basis": basis(st.name), "out_bytes": sum(outs.values()), "outs": outs, **res})
            echo(f"[{size.label}] {st.name}: {res['wall_s']:.1f} s, peak {res['peak_pss_bytes'] / 2**20:,.0f} MiB "
                 f"(RSS sum {res['peak_rss_bytes'] / 2**20:,.0f} MiB)")
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    c = counts(ws)
    for r in rows:
        r.update(c)
    if not keep:
        shutil.rmtree(ws, ignore_errors=True)
    return rows
