"""`make bench-scale`: how each DAG stage's wall time and peak memory grow with the number of cells.

For each size of the embedded synthetic census (a factor on the profile's cells, optionally at another gene
count) a throw-away project workspace gets a params.yaml (the profile, the size's census, one-epoch training
budgets) and every stage of dvc.yaml runs there in DAG order, with the stage's own ``cmd`` as DVC renders it
(DVC itself renders dvc.yaml inside the workspace, so the curve follows the real DAG). Each stage runs under
a sampler that sums the resident memory of its whole process tree every ``interval`` seconds: the stage
process and all its descendants (Ray's GCS, raylet, dashboard and workers are children of the driver that
started them), plus any process whose command line names the workspace's own Ray temp dir (in case a Ray
daemon was re-parented). Then :func:`fit_stage` fits how each stage grows, flags what grows too fast, and
:func:`extrapolate` carries it to the paper's census and the nodes of infra/ray/cluster.yaml.

Why a workspace per size rather than ``dvc repro``: DVC would skip stages whose inputs did not change and
adds its own hashing time and memory to each stage; here every stage runs once, timed on its own.
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil
import yaml

from sctab.provenance import RunRecord, machine_text

REPO = Path(__file__).resolve().parents[3]

#: the paper's census (Methods): cells after the filters, training cells, genes
PAPER = {"cells_in": 22_200_000, "train_cells": 15_200_000, "n_genes": 19_331}
#: a stage whose peak memory grows by more than this per cell holds more than the cell's metadata (ids, labels,
#: split names and their string copies: ~150-330 B measured in the tables that must exist per cell)
BYTES_PER_CELL_LIMIT = 300.0
#: a stage whose log-log time slope exceeds this grows faster than linearly
TIME_SLOPE_LIMIT = 1.15
#: ... or whose marginal time grows like cells**1.5 or faster (a fixed cost can hide that from the slope), once
#: the last size adds enough seconds to tell from noise
MARGINAL_LIMIT = 1.5
MARGINAL_MIN_S = 5.0
#: stages that draw a sample of the training cells; the bench sets the sample to every training cell (so the
#: curve measures the cost per sampled cell) and extrapolates to the paper's sample: (parameter, paper size)
SAMPLED = {"augment": ("augment.n_cells", 500_000), "train_celltypist": ("models.celltypist.n_cells", 1_500_000)}
#: stages whose work is over the training split (the rest work on every cell that enters)
TRAIN_STAGES_PREFIX = "train_"
TRAIN_STAGES = {"augment", "pca", "tune"}
#: RAM of the AWS instance types infra/ray/cluster.yaml may name (GiB, AWS's published sizes)
INSTANCE_RAM_GIB = {"g5.xlarge": 16, "g5.2xlarge": 32, "g5.4xlarge": 64, "g5.8xlarge": 128, "m6i.xlarge": 16,
                    "m6i.2xlarge": 32, "m6i.4xlarge": 64, "m6i.8xlarge": 128, "p3.2xlarge": 61, "g4dn.2xlarge": 32}
#: fixed budgets of the training stages (one epoch for the neural models)
XGBOOST_ROUNDS = 5
CELLTYPIST_EPOCHS = 1
SCTAB_MEMBERS = 1
ALL_CELLS = 1_000_000_000  # "every training cell" for a sample size parameter
#: share of this machine's RAM the CellTypist fit may plan for in a scale run (models.celltypist.max_memory_gib):
#: uncapped, its dense-free sparse fit still needs ~40 B per non-zero, more than this machine has at 500,000 cells
#: in; where the cap binds, the stage is fitted on the cells it trained on (its report's train_cells)
CELLTYPIST_RAM_SHARE = 0.4
#: the bench stops before a stage when less than this is free where its workspace lies
MIN_FREE_DISK = 4 * 2**30


class ScaleError(RuntimeError):
    """A size, stage or option the scale bench cannot run, or a stage that failed (with its log's tail)."""


# ---------------------------------------------------------------------------------------------- sizes, params


@dataclass(frozen=True)
class Size:
    """A census size: ``factor`` times the profile's cells per donor, at ``n_genes`` (None: the profile's); or
    ``cells`` cells in all (the profile's sizing rule picks datasets, donors and cells per donor, as
    ``sctab params --cells`` does)."""

    factor: float
    n_genes: int | None = None
    cells: int | None = None

    @property
    def label(self) -> str:
        if self.cells is not None:
            c = self.cells
            f = f"c{c // 1000}k" if c % 1000 == 0 else f"c{c}"
        else:
            f = f"x{self.factor:g}"
        return f if self.n_genes is None else f"{f}@{self.n_genes}g"

    @classmethod
    def parse(cls, text: str) -> "Size":
        """``x4`` (4 x the cells), ``x1@19331`` (1 x the cells at 19,331 genes) or ``c500k`` / ``c500000``
        (about 500,000 cells in the census)."""
        t = text.strip()
        body, _, genes = t.partition("@")
        cells = None
        try:
            if body.startswith("c"):
                num = body[1:].lower()
                mult = 1000 if num.endswith("k") else 1_000_000 if num.endswith("m") else 1
                cells = int(round(float(num.rstrip("km")) * mult))
                factor = 1.0
            elif body.startswith("x"):
                factor = float(body[1:])
            else:
                raise ValueError
            n_genes = int(genes.rstrip("g")) if genes else None
        except ValueError:
            raise ScaleError(f"size {text!r}: expected x<factor>, c<cells> or either @<genes>, e.g. x4, c500k or "
                             "x1@19331") from None
        if not factor > 0 or (n_genes is not None and n_genes < 50) or (cells is not None and cells < 1000):
            raise ScaleError(f"size {text!r}: the factor must be > 0, the cells at least 1,000 and the genes at "
                             "least 50")
        return cls(factor, n_genes, cells)


def set_dotted(params: dict, dotted: str, value) -> None:
    """``params[a][b][c] = value`` for ``a.b.c``; the path must exist up to its last key."""
    node = params
    parts = dotted.split(".")
    for p in parts[:-1]:
        if not isinstance(node.get(p), dict):
            raise ScaleError(f"parameter {dotted!r}: {p!r} is not a section of the profile")
        node = node[p]
    node[parts[-1]] = value


def budget_overrides(params: dict) -> dict:
    """The scale run's training budgets: one epoch per neural model (no step budget), one scTab ensemble
    member (the members train one after the other: the stage's time per member; the memory is one member's),
    a fixed number of XGBoost rounds without early stopping, one CellTypist epoch, and the sampled stages on
    every training cell (what their cost per sampled cell is measured on)."""
    out = {}
    for name, m in (params.get("models") or {}).items():
        if name == "celltypist" or not isinstance(m, dict) or not ({"epochs", "max_steps"} & set(m)):
            continue
        out[f"models.{name}.epochs"] = 1
        if "max_steps" in m:
            out[f"models.{name}.max_steps"] = None
    if "xgboost" in (params.get("models") or {}):
        out["models.xgboost.n_estimators"] = XGBOOST_ROUNDS
        out["models.xgboost.early_stopping_rounds"] = None
    if "celltypist" in (params.get("models") or {}):
        out["models.celltypist.epochs"] = CELLTYPIST_EPOCHS
        out["models.celltypist.max_memory_gib"] = celltypist_budget_gib(params)
    seeds = (params.get("ensemble") or {}).get("seeds")
    if seeds:
        out["ensemble.seeds"] = list(seeds)[:SCTAB_MEMBERS]
        out["ensemble.spread_seeds"] = 1
    for key, _ in SAMPLED.values():
        out[key] = ALL_CELLS
    return out


def celltypist_budget_gib(params: dict, ram_bytes: float | None = None) -> float:
    """The CellTypist fit's memory budget in a scale run: CELLTYPIST_RAM_SHARE of this machine's RAM, or the
    profile's own cap when smaller (GiB, one decimal)."""
    ram = float(ram_bytes if ram_bytes is not None else psutil.virtual_memory().total)
    mine = math.floor(ram * CELLTYPIST_RAM_SHARE / 2**30 * 10) / 10
    own = ((params.get("models") or {}).get("celltypist") or {}).get("max_memory_gib")
    return float(min(mine, own)) if own is not None else float(mine)


def size_params(profile: dict, size: Size, overrides: dict | None = None) -> dict:
    """The profile with the size's census (cells per donor x factor, genes) and the scale budgets, then
    ``overrides`` (dotted keys, e.g. from ``--set``) on top."""
    params = copy.deepcopy(profile)
    syn = params.get("synthetic")
    if not isinstance(syn, dict) or (params.get("census") or {}).get("source") != "embedded":
        raise ScaleError(f"profile {params.get('profile')!r} does not build the embedded synthetic census; the "
                         "scale bench needs census.source: embedded and a synthetic section")
    if size.cells is not None:
        from sctab.census.synthetic import SyntheticCensusConfig, scaled_to_cells

        syn.update(scaled_to_cells(SyntheticCensusConfig.from_params(params), size.cells))
    else:
        lo, hi = syn["cells_per_donor"]
        syn["cells_per_donor"] = [max(1, round(lo * size.factor)), max(1, round(hi * size.factor))]
    if size.n_genes is not None:
        syn["n_genes"] = int(size.n_genes)
    for k, v in {**budget_overrides(params), **(overrides or {})}.items():
        set_dotted(params, k, v)
    return params


def parse_set(items: list[str]) -> dict:
    """``key=value`` pairs (YAML values) from ``--set``."""
    out = {}
    for item in items or []:
        key, sep, val = item.partition("=")
        if not sep or not key:
            raise ScaleError(f"--set {item!r}: expected dotted.key=value")
        out[key.strip()] = yaml.safe_load(val)
    return out


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
                         "n_genes": int(params["synthetic"]["n_genes"]), "stage": st.name,
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


# ---------------------------------------------------------------------------------------------- fitting


def _loglog_slope(x, y) -> float:
    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = (x > 0) & (y > 0)
    if ok.sum() < 2 or np.ptp(np.log(x[ok])) == 0:
        return float("nan")
    return float(np.polyfit(np.log(x[ok]), np.log(y[ok]), 1)[0])


def _linear(x, y) -> tuple[float, float]:
    """(intercept, slope) of a least-squares line."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 2 or np.ptp(x) == 0:
        return float(np.mean(y)), 0.0
    b, a = np.polyfit(x, y, 1)
    return float(a), float(b)


def marginal_exponent(x, y) -> float:
    """k in ``y = a + c * x**k`` from the first and last secants (consecutive sizes): the fixed part cancels, so a
    quadratic stage shows k ~ 2 even where its fixed cost keeps the log-log slope under 1. NaN with fewer than
    three sizes or an increment that is not positive."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 3:
        return float("nan")
    d_lo, d_hi = (y[1] - y[0]) / (x[1] - x[0]), (y[-1] - y[-2]) / (x[-1] - x[-2])
    if d_lo <= 0 or d_hi <= 0:
        return float("nan")
    mid_lo, mid_hi = math.sqrt(x[0] * x[1]), math.sqrt(x[-2] * x[-1])
    return 1.0 + math.log(d_hi / d_lo) / math.log(mid_hi / mid_lo)


def fit_stage(cells, wall_s, peak_bytes) -> dict:
    """How a stage grows with cells: log-log slopes of time and memory, the memory's growth in bytes per cell
    (slope of a straight line through peak RSS against cells), the time's per-cell cost, the exponent of the
    marginal time, and the flags: memory growing beyond a cell's metadata (> BYTES_PER_CELL_LIMIT), time growing
    faster than linearly (log-log slope > TIME_SLOPE_LIMIT, or a marginal exponent > MARGINAL_LIMIT where the
    last increment is at least MARGINAL_MIN_S: large enough to be more than timing noise)."""
    order = np.argsort(np.asarray(cells, float))
    x = np.asarray(cells, float)[order]
    t = np.asarray(wall_s, float)[order]
    m = np.asarray(peak_bytes, float)[order]
    t_a, t_b = _linear(x, t)
    m_a, m_b = _linear(x, m)
    fit = {"n_points": int(len(x)), "time_slope": _loglog_slope(x, t), "mem_slope": _loglog_slope(x, m),
           "time_marginal_exp": marginal_exponent(x, t),
           "time_intercept_s": t_a, "time_per_cell_s": t_b, "mem_intercept_bytes": m_a, "bytes_per_cell": m_b,
           "max_cells": float(x[-1]) if len(x) else float("nan"), "time_at_max": float(t[-1]) if len(x) else 0.0,
           "mem_at_max": float(m[-1]) if len(x) else 0.0}
    flags = []
    if m_b > BYTES_PER_CELL_LIMIT:
        flags.append(f"memory +{m_b:,.0f} B/cell")
    if fit["time_slope"] > TIME_SLOPE_LIMIT:
        flags.append(f"time superlinear (slope {fit['time_slope']:.2f})")
    elif fit["time_marginal_exp"] > MARGINAL_LIMIT and t[-1] - t[-2] >= MARGINAL_MIN_S:
        flags.append(f"time superlinear (marginal exponent {fit['time_marginal_exp']:.2f})")
    fit["flags"] = flags
    return fit


def targets_met(fit: dict) -> tuple[bool, bool]:
    """(memory, time) targets of the scale run: peak memory flat in cells (at most BYTES_PER_CELL_LIMIT per cell,
    or, for a stage that runs data-parallel on Ray, bounded per worker: checked on deployment (b)), and time
    linear (marginal exponent at most TIME_SLOPE_LIMIT; a stage whose time does not grow at all meets it)."""
    mem_ok = fit["bytes_per_cell"] <= BYTES_PER_CELL_LIMIT or fit["stage"] in RAY_PARALLEL
    k = fit["time_marginal_exp"]
    time_ok = (k <= TIME_SLOPE_LIMIT) if not math.isnan(k) else fit["time_slope"] <= TIME_SLOPE_LIMIT
    return bool(mem_ok), bool(time_ok)


def gene_ratio(at_genes: float, cells: float, intercept: float, per_cell: float) -> tuple[float, float, str]:
    """How much more a stage's per-cell part costs at the paper's genes: (ratio, intercept kept, method).

    With a measurement ``at_genes`` at ``cells`` cells and the profile-gene fit ``intercept + per_cell *
    cells``: when the per-cell part is at least a tenth of the fit there, the ratio of per-cell parts (the
    fixed part is taken as gene-independent); otherwise the ratio of the totals (the whole cost scales).
    Never below 1: more genes are never cheaper, a ratio under 1 is noise."""
    base_total = intercept + per_cell * cells
    part = per_cell * cells
    if base_total > 0 and part >= 0.1 * base_total and intercept >= 0:
        return max(1.0, (at_genes - intercept) / part), intercept, "per-cell part"
    if base_total > 0:
        return max(1.0, at_genes / base_total), 0.0, "whole stage"
    return 1.0, 0.0, "none (no fit)"


def project(fit: dict, cells: float, key: str) -> float:
    """A fitted quantity (``time`` or ``mem``) at ``cells``, at the profile's genes: the larger of the straight
    line and the power law through the largest measured size (a sublinear log-log slope from fixed costs would
    underestimate, a straight line would miss superlinear growth)."""
    a, b = (fit["time_intercept_s"], fit["time_per_cell_s"]) if key == "time" else \
        (fit["mem_intercept_bytes"], fit["bytes_per_cell"])
    slope = fit[f"{key}_slope"]
    at_max = fit[f"{key}_at_max"]
    power = at_max * (cells / fit["max_cells"]) ** slope if not math.isnan(slope) and fit["max_cells"] > 0 else 0.0
    return max(a + b * cells, power, 0.0)


def target_cells(stage: str) -> float:
    """The paper-scale cell count a stage is carried to: cells in, training cells or the paper's sample."""
    if stage in SAMPLED:
        return float(min(SAMPLED[stage][1], PAPER["train_cells"]))
    return float(PAPER["train_cells"] if basis(stage) == "train" else PAPER["cells_in"])


def extrapolate(fit: dict, stage: str, genes_point: dict | None) -> dict:
    """The stage at the paper's census: time and peak memory at its target cells, scaled to the paper's genes
    by the ``genes_point`` (``{"cells", "wall_s", "peak_bytes"}`` measured at the paper's genes) when there."""
    n = target_cells(stage)
    out = {"target_cells": n}
    for key, meas, a_key, b_key in (("time", "wall_s", "time_intercept_s", "time_per_cell_s"),
                                    ("mem", "peak_bytes", "mem_intercept_bytes", "bytes_per_cell")):
        base = project(fit, n, key)
        if genes_point:
            r, kept, how = gene_ratio(genes_point[meas], genes_point["cells"], fit[a_key], fit[b_key])
        else:
            r, kept, how = 1.0, 0.0, "none (no point at the paper's genes)"
        kept = min(kept, base)
        out[f"{key}_gene_ratio"] = r
        out[f"{key}_gene_method"] = how
        out[f"{key}_full"] = kept + r * (base - kept)
    return out


def node_ram(cluster_yaml: Path) -> dict[str, float]:
    """RAM in bytes of each node type of a Ray cluster file (from its AWS instance type)."""
    spec = yaml.safe_load(Path(cluster_yaml).read_text())
    out = {}
    for name, node in (spec.get("available_node_types") or {}).items():
        itype = (node.get("node_config") or {}).get("InstanceType")
        if itype not in INSTANCE_RAM_GIB:
            raise ScaleError(f"{cluster_yaml}: node type {name} uses instance {itype!r}, whose RAM the scale bench "
                             f"does not know; add it to INSTANCE_RAM_GIB in {Path(__file__).name}")
        out[f"{name} ({itype})"] = INSTANCE_RAM_GIB[itype] * 2**30
    return out


#: the row field each basis reads
BASIS_KEY = {"train": "train_cells", "sample": "celltypist_cells", "in": "cells_in"}


def fits(rows: list[dict], base_genes: int) -> list[dict]:
    """Per stage: the fit over the sizes at ``base_genes`` and the extrapolation to the paper's census."""
    out = []
    for stage in dict.fromkeys(r["stage"] for r in rows):
        mine = [r for r in rows if r["stage"] == stage]
        key = BASIS_KEY[basis(stage)]
        base = [r for r in mine if r["n_genes"] == base_genes and r.get(key)]
        if len(base) < 2:
            continue
        f = fit_stage([r[key] for r in base], [r["wall_s"] for r in base], [r["peak_pss_bytes"] for r in base])
        g = [r for r in mine if r["n_genes"] == PAPER["n_genes"] and r.get(key)]
        point = {"cells": g[0][key], "wall_s": g[0]["wall_s"], "peak_bytes": g[0]["peak_pss_bytes"]} if g else None
        ex = extrapolate(f, stage, None if base_genes == PAPER["n_genes"] else point)
        if base_genes == PAPER["n_genes"]:
            ex["time_gene_method"] = ex["mem_gene_method"] = "measured at the paper's genes"
        out.append({"stage": stage, "basis": basis(stage), **f, **ex})
    return out


# ---------------------------------------------------------------------------------------------- two deployments

#: (a) one node with 16 cores, 128 GiB and one H100
NODE_A = {"label": "(a) one node: 16 cores, 128 GiB, one H100", "cores": 16, "ram_bytes": 128 * 2**30}
#: (b) a Ray cluster of 32 GiB nodes with 8 vCPUs each (the instances of infra/ray/cluster.yaml)
NODE_B = {"label": "(b) Ray cluster of 32 GiB nodes, 8 vCPUs each", "cores": 8, "ram_bytes": 32 * 2**30}
#: share of a node's RAM a stage may plan to use (the OS, Ray's object store and page cache need the rest)
RAM_USABLE = 0.8
#: stages whose work a threaded library spreads over the node's cores (BLAS; XGBoost's and CellTypist's
#: threads): their time is divided by the ratio of cores, the best case of linear scaling, stated as such
THREADED = {"pca", "train_xgboost", "train_celltypist"}
#: stages that run data-parallel on Ray workers: on (b) the per-cell part of their memory splits over workers
RAY_PARALLEL = {"train_linear", "train_mlp", "train_sctab", "train_xgboost"}
#: neural training stages: on (a) they run on the GPU at the rates the GPU bench measured on an H100
NEURAL = {"train_linear", "train_mlp", "train_sctab"}
#: the GPU bench's rows on a lent H100 (docs/gpu.md): scTab training step (float32) and inference per model
GPU_ROWS = REPO / "benchmarks" / "results" / "gpu-2026-11-26" / "gpu-bench-rows.json"


def gpu_rates(path: Path = GPU_ROWS) -> dict | None:
    """The H100's measured medians (cells/s) of the scTab training step and inference, or None without the file."""
    if not Path(path).exists():
        return None
    rows = {r["name"]: r for r in json.loads(Path(path).read_text())["rows"]}
    try:
        return {"train": float(rows["device_train_step"]["median"]), "infer": float(rows["device_inference"]["median"]),
                "source": str(Path(path).relative_to(REPO)) if Path(path).is_relative_to(REPO) else str(path),
                "device": rows["device_train_step"]["ours"]["label"].rsplit(" on ", 1)[-1]}
    except KeyError as e:
        raise ScaleError(f"{path} lacks the GPU row or field {e}") from None


def deployments(fitted: list[dict], local_cores: int, rates: dict | None) -> list[dict]:
    """Each fitted stage at the paper's census on (a) one 16-core, 128 GiB node with an H100 and (b) a Ray cluster
    of 32 GiB nodes: time, peak memory (per worker for the Ray stages on (b)), workers and whether it fits.

    Time on (a): the neural stages at the H100's measured training-step rate over the training cells plus its
    inference rate over the validation cells (a sixth of the cells in: the 15 % split), plus the fit's fixed
    cost; the threaded stages (THREADED) at this machine's time times local cores / 16; the rest as measured
    here (one process: no speed-up is claimed). Memory on (a): the projected peak. On (b): a Ray stage takes as
    many workers as its per-cell memory needs to stay under RAM_USABLE of a node (the fixed part on every
    worker), its time divided by workers x 8 cores over the local cores; any other stage must fit one node."""
    out = []
    for f in fitted:
        st = f["stage"]
        fixed = max(f["mem_intercept_bytes"], 0.0)
        mem = f["mem_full"]
        t = f["time_full"]
        if st == "train_celltypist":  # the stage sizes its sample to the node's memory (max_memory_gib)
            out.append(_celltypist_on_nodes(f, local_cores))
            continue
        # (a)
        if st in NEURAL and rates:
            n = f["target_cells"]
            val = PAPER["cells_in"] * 0.15
            ta, how_a = max(f["time_intercept_s"], 0.0) + n / rates["train"] + val / rates["infer"], "H100 rates"
        elif st in THREADED:
            ta, how_a = t * local_cores / NODE_A["cores"], f"x {local_cores}/{NODE_A['cores']} cores"
        else:
            ta, how_a = t, "as measured (one process)"
        fits_a = mem <= NODE_A["ram_bytes"] * RAM_USABLE
        # (b)
        room = NODE_B["ram_bytes"] * RAM_USABLE
        if st in RAY_PARALLEL:
            per_cell = max(mem - fixed, 0.0)
            workers = 1 if fixed + per_cell <= room else (math.ceil(per_cell / (room - fixed)) if room > fixed
                                                           else None)
            mem_b = fixed + per_cell / workers if workers else mem
            tb = t * local_cores / (NODE_B["cores"] * (workers or 1))
        else:
            workers, mem_b = None, mem
            tb = t * local_cores / NODE_B["cores"] if st in THREADED else t
        fits_b = mem_b <= room and (st not in RAY_PARALLEL or workers is not None)
        out.append({"stage": st, "time_a": ta, "how_a": how_a, "mem_a": mem, "fits_a": fits_a, "time_b": tb,
                    "workers_b": workers, "mem_b": mem_b, "fits_b": fits_b})
    return out


def _celltypist_on_nodes(f: dict, local_cores: int) -> dict:
    """CellTypist on (a) and (b): its sample is the paper's 1.5 M cells or what RAM_USABLE of the node fits by the
    fitted memory line (the stage's max_memory_gib does this sizing), its time the fitted line at that sample."""
    res = {"stage": f["stage"]}
    for tag, node in (("a", NODE_A), ("b", NODE_B)):
        room = node["ram_bytes"] * RAM_USABLE
        per = max(f["bytes_per_cell"] * f.get("mem_gene_ratio", 1.0), 1e-9)
        fixed = max(f["mem_intercept_bytes"], 0.0)
        cells = float(min(f["target_cells"], max((room - fixed) / per, 0.0)))
        t = max(f["time_intercept_s"], 0.0) + f["time_per_cell_s"] * f.get("time_gene_ratio", 1.0) * cells
        res.update({f"time_{tag}": t * local_cores / node["cores"], f"mem_{tag}": fixed + per * cells,
                    f"fits_{tag}": cells > 0, f"sample_{tag}": cells})
    res.update({"how_a": f"sample {res['sample_a'] / 1e6:.2f} M cells, x {local_cores}/{NODE_A['cores']} cores",
                "workers_b": None, "how_b": f"sample {res['sample_b'] / 1e6:.2f} M cells"})
    return res


# ---------------------------------------------------------------------------------------------- reporting

CSV_FIELDS = ["size", "factor", "n_genes", "stage", "basis", "cells_in", "train_cells", "celltypist_cells", "wall_s",
              "peak_pss_mib", "peak_rss_mib", "peak_single_mib", "peak_procs", "procs_by_marker", "ray_left",
              "out_bytes"]


def write_csv(rows: list[dict], path: Path) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=CSV_FIELDS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({**r, "wall_s": f"{r['wall_s']:.3f}", "peak_rss_mib": f"{r['peak_rss_bytes'] / 2**20:.1f}",
                        "peak_pss_mib": f"{r['peak_pss_bytes'] / 2**20:.1f}",
                        "peak_single_mib": f"{r['peak_single_bytes'] / 2**20:.1f}"})


def plot(rows: list[dict], path: Path, base_genes: int) -> None:
    """Log-log: time and peak memory against cells (each stage's basis), one line per stage; the point at the
    paper's genes as an open marker."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = list(dict.fromkeys(r["stage"] for r in rows))
    cmap = plt.get_cmap("tab20")
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.5))
    for i, st in enumerate(stages):
        key = BASIS_KEY[basis(st)]
        mine = sorted((r for r in rows if r["stage"] == st and r.get(key)), key=lambda r: r[key])
        for ax, val in zip(axes, (lambda r: r["wall_s"], lambda r: r["peak_pss_bytes"] / 2**20)):
            base = [r for r in mine if r["n_genes"] == base_genes]
            ax.plot([r[key] for r in base], [val(r) for r in base], "o-", color=cmap(i % 20), label=st, ms=4)
            other = [r for r in mine if r["n_genes"] != base_genes]
            ax.plot([r[key] for r in other], [val(r) for r in other], "o", mfc="none", color=cmap(i % 20), ms=7)
    for ax, ylabel in zip(axes, ("wall time (s)", "peak memory of the process tree, summed PSS (MiB)")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("cells (cells in; training cells for training-split stages; CellTypist: its sample)")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_title(f"time vs cells ({base_genes:,} genes; open: paper's genes)")
    axes[1].set_title("peak memory vs cells")
    axes[1].legend(fontsize=7, ncol=2, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _hms(s: float) -> str:
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"


def _gib(b: float) -> str:
    return f"{b / 2**30:,.1f} GiB" if b >= 2**30 else f"{b / 2**20:,.0f} MiB"


def markdown(rows: list[dict], fitted: list[dict], header: dict, nodes: dict[str, float]) -> str:
    sizes = list(dict.fromkeys(r["size"] for r in rows))
    stages = list(dict.fromkeys(r["stage"] for r in rows))
    by = {(r["size"], r["stage"]): r for r in rows}
    first = {s: next(r for r in rows if r["size"] == s) for s in sizes}
    lines = [f"## Scale curve, {header['started']}{' (quick)' if header['quick'] else ''}", "",
             f"{header['run']}; every row from this invocation.", "",
             f"Machine: {header['machine']}. {header['load'].capitalize()}.", "",
             f"Census: the embedded synthetic census of profile `{header['profile']}`, its cells per donor times "
             f"each x-size's factor, or sized to a c-size's cells by the profile's rule (`sctab params --cells`); "
             f"training: one epoch per neural model, scTab {SCTAB_MEMBERS} ensemble member "
             f"(the paper's 5 train one after the other: 5x its time), XGBoost "
             f"{XGBOOST_ROUNDS} rounds without early stopping, CellTypist {CELLTYPIST_EPOCHS} epoch; augment "
             f"samples every training cell, CellTypist every one its memory budget allows "
             f"(models.celltypist.max_memory_gib: {CELLTYPIST_RAM_SHARE:.0%} of this machine's RAM or the profile's "
             f"cap, the smaller). Overrides: {header['overrides'] or 'none'}.", "",
             "Memory: the peak over samples every "
             f"{header['interval']:g} s of the summed RSS of the stage's process tree (the shell DVC's command "
             "runs in, the stage process and all its descendants, which include the Ray daemons and workers a "
             "training stage starts, plus any process whose command line names the workspace's own Ray temp dir), "
             "and never below the kernel's high-water mark of the largest single process. Each process counts its "
             "proportional set size (PSS: a page shared by n processes counts 1/n in each), so the sum is what the "
             "tree holds; the fits use it. In brackets, the summed RSS, which counts shared pages (Ray's libraries, "
             "its object store) once per process: an upper bound.", "",
             "### Sizes", "",
             "| Size | Genes | Cells in | Training cells |", "|---|---|---|---|"]
    for s in sizes:
        r = first[s]
        lines.append(f"| {s} | {r['n_genes']:,} | {r['cells_in'] or 0:,} | {r['train_cells'] or 0:,} |")
    lines += ["", "### Wall time (s) and peak memory (MiB) per stage", "",
              "| Stage | " + " | ".join(sizes) + " |", "|---|" + "---|" * len(sizes)]
    for st in stages:
        cells = []
        for s in sizes:
            r = by.get((s, st))
            cells.append("-" if r is None else f"{r['wall_s']:,.1f} s, {r['peak_pss_bytes'] / 2**20:,.0f} MiB "
                         f"({r['peak_rss_bytes'] / 2**20:,.0f})")
        lines.append(f"| {st} | " + " | ".join(cells) + " |")
    lines.append("| **total** | " + " | ".join(
        f"{sum(r['wall_s'] for r in rows if r['size'] == s) / 60:,.1f} min" for s in sizes) + " |")
    if fitted:
        ram = min(nodes.values()) if nodes else None
        lines += ["", "### Growth with cells and the paper's census", "",
                  f"Fits over the sizes at {header['base_genes']:,} genes, against each stage's basis (`in`: cells "
                  f"in; `train`: training cells; `sample`: the cells CellTypist trained on, fewer than the "
                  f"training cells where its memory budget binds). Flags: memory growing by more than "
                  f"{BYTES_PER_CELL_LIMIT:.0f} bytes per cell (a cell's metadata), time with a log-log slope above "
                  f"{TIME_SLOPE_LIMIT} "
                  f"over all sizes, or a marginal exponent above {MARGINAL_LIMIT} (the fixed cost removed; "
                  "docs/bench.md). "
                  "Paper's census: "
                  f"{PAPER['cells_in'] / 1e6:.1f} M cells in, {PAPER['train_cells'] / 1e6:.1f} M training cells, "
                  f"{PAPER['n_genes']:,} genes; sampled stages at the paper's sample "
                  f"({', '.join(f'{k} {v[1]:,}' for k, v in SAMPLED.items())}). Projection at the profile's genes: "
                  "the larger of the straight line and the power law through the largest size; then the per-cell "
                  "part times the gene ratio (see docs/bench.md). Times are on this machine's cores and are per "
                  "epoch / per the stated budget for the training stages.", "",
                  "| Stage | Basis | Time slope / marginal exponent | Memory slope | Memory growth | Flags | Cells at "
                  "paper scale | Gene ratio time / memory | Time at paper scale | Peak memory at paper scale | "
                  f"Fits a {_gib(ram) if ram else '?'} node | Memory flat / time linear |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for f in fitted:
            fits_node = "-" if ram is None else ("yes" if f["mem_full"] <= ram else "**no**")
            mem_ok, time_ok = targets_met(f)
            met = (f"{'yes' if mem_ok else '**no**'}{' (Ray: per worker)' if f['stage'] in RAY_PARALLEL else ''} / "
                   f"{'yes' if time_ok else '**no**'}")
            lines.append(
                f"| {f['stage']} | {f['basis']} | {f['time_slope']:.2f} / {f['time_marginal_exp']:.2f} | "
                f"{f['mem_slope']:.2f} | {f['bytes_per_cell']:,.0f} B/cell | "
                f"{'**' + '; '.join(f['flags']) + '**' if f['flags'] else '-'} | {f['target_cells'] / 1e6:.1f} M | "
                f"{f['time_gene_ratio']:.1f} / {f['mem_gene_ratio']:.1f} | {_hms(f['time_full'])} | "
                f"{_gib(f['mem_full'])} | {fits_node} | {met} |")
        if nodes:
            lines += ["", "Nodes of infra/ray/cluster.yaml: " + "; ".join(f"{k}: {_gib(v)} RAM"
                                                                       for k, v in nodes.items()) + "."]
    deps = header.get("deployments") or []
    if deps:
        rates = header.get("gpu_rates")
        lines += ["", "### The paper's census on two deployments", "",
                  f"{NODE_A['label']}; {NODE_B['label']}. A stage fits when its peak (per worker for the Ray "
                  f"stages on (b)) stays under {RAM_USABLE:.0%} of a node's RAM. Times as budgeted here (one epoch, "
                  f"one scTab member). On (a) the neural stages use the training-step and inference rates measured "
                  + (f"on an {rates['device']} ({rates['train']:,.0f} and {rates['infer']:,.0f} cells/s, "
                     f"`{rates['source']}`), not measured in this run; " if rates else "on a GPU: none found; ")
                  + f"the threaded stages ({', '.join(sorted(THREADED))}) assume linear scaling over cores, a best "
                  "case; the other stages run as one process and keep this machine's time. On (b) a Ray stage "
                  "takes as many workers as its memory needs. CellTypist sizes its sample to a node's memory "
                  "(models.celltypist.max_memory_gib): the paper's 1.5 M cells where they fit, fewer where not, "
                  "as stated.", "",
                  "| Stage | (a) time | (a) how | (a) peak | (a) fits | (b) workers / sample | (b) time "
                  "| (b) peak per worker | (b) fits |", "|---|---|---|---|---|---|---|---|---|"]
        for d in deps:
            lines.append(f"| {d['stage']} | {_hms(d['time_a'])} | {d['how_a']} | {_gib(d['mem_a'])} | "
                         f"{'yes' if d['fits_a'] else '**no**'} | {d.get('how_b') or d['workers_b'] or '-'} | "
                         f"{_hms(d['time_b'])} | "
                         f"{_gib(d['mem_b'])} | {'yes' if d['fits_b'] else '**no**'} |")
        lines.append(f"| **DAG** | {_hms(sum(d['time_a'] for d in deps))} | | "
                     f"{_gib(max(d['mem_a'] for d in deps))} | {'yes' if all(d['fits_a'] for d in deps) else '**no**'}"
                     f" | | {_hms(sum(d['time_b'] for d in deps))} | {_gib(max(d['mem_b'] for d in deps))} | "
                     f"{'yes' if all(d['fits_b'] for d in deps) else '**no**'} |")
    big = [r for r in rows if r["size"] == sizes[-1] and r.get("out_bytes")]
    if big:
        lines += ["", f"### Outputs on disk at {sizes[-1]}", "",
                  "Bytes per cell in: the slope of a straight line through each output's size over the sizes (a fixed "
                  "part, such as the ontology, does not count per cell); the size itself divided by the cells with "
                  "one size only. The DVC cache keeps one more copy of each output unless it links.", "",
                  "| Stage | Output | Bytes | Bytes per cell in | At 22.2 M cells |", "|---|---|---|---|---|"]
        tot_fixed = tot_per = 0.0
        for r in big:
            for o, b in (r.get("outs") or {}).items():
                pts = [(q["cells_in"], q["outs"][o]) for q in rows
                       if q["stage"] == r["stage"] and q.get("cells_in") and o in (q.get("outs") or {})]
                fixed, per = _linear(*zip(*pts)) if len(pts) > 1 else (0.0, b / max(r.get("cells_in") or 1, 1))
                per = max(per, 0.0)
                fixed = b - per * (r.get("cells_in") or 0)
                tot_fixed, tot_per = tot_fixed + fixed, tot_per + per
                lines.append(f"| {r['stage']} | `{o}` | {_gib(b)} | {per:,.0f} | "
                             f"{_gib(fixed + per * PAPER['cells_in'])} |")
        lines.append(f"| **all** | | {_gib(sum(r['out_bytes'] for r in big))} | {tot_per:,.0f} | "
                     f"{_gib(tot_fixed + tot_per * PAPER['cells_in'])} |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------- entry

DEFAULT_SIZES = "x1,x2,x4,x1@19331"
QUICK_SIZES = "x0.1,x0.2"
QUICK_STAGES = "train_linear"
#: small enough for a census of a tenth of the tiny profile's cells
QUICK_SET = {"synthetic.n_genes": 400, "filters.min_cells_per_type": 20, "filters.min_donors_per_type": 3}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="benchmarks/scale.py",
        description="Scale curve (make bench-scale): run every stage of dvc.yaml on the embedded census at several "
        "sizes, record each stage's wall time and the peak RSS of its whole process tree, fit how both grow with "
        "cells, flag what grows too fast and extrapolate to the paper's census (22.2 M cells) and the nodes of "
        "infra/ray/cluster.yaml. Writes benchmarks/results/scale-<date>.md, .csv and .png.")
    p.add_argument("--sizes", default=None, help=f"comma-separated sizes: x<factor> scales the profile's cells per "
                   f"donor, c<cells> (e.g. c500k) sizes the census to about that many cells as `sctab params --cells` "
                   f"does, @<genes> after either also sets the genes (default {DEFAULT_SIZES}; quick {QUICK_SIZES}; "
                   f"the paper's dimension: --profile scale --sizes c50k,c150k,c500k)")
    p.add_argument("--stages", default=None, help="comma-separated stages to run, with every stage they depend on "
                   f"(default: all of dvc.yaml; quick: {QUICK_STAGES} and its upstream)")
    p.add_argument("--profile", default="tiny", help="profile the workspaces start from (default: %(default)s)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a parameter in every workspace, e.g. models.sctab.batch_size=2048 (repeatable)")
    p.add_argument("--quick", action="store_true", help=f"smoke run: sizes {QUICK_SIZES} of a reduced census "
                   f"({', '.join(f'{k}={v}' for k, v in QUICK_SET.items())}); writes nothing unless --out")
    p.add_argument("--out", default=None, help="folder for scale-<date>.md/.csv/.png (default benchmarks/results/)")
    p.add_argument("--workdir", default=None, help="where the workspaces go (default: a temporary folder)")
    p.add_argument("--keep", action="store_true", help="keep the workspaces (logs, outputs) after the run")
    p.add_argument("--interval", type=float, default=0.2, help="seconds between memory samples (default 0.2)")
    a = p.parse_args(argv)

    from sctab.config import ConfigError, load_profile

    try:
        sizes = [Size.parse(s) for s in (a.sizes or (QUICK_SIZES if a.quick else DEFAULT_SIZES)).split(",") if s]
        overrides = {**(QUICK_SET if a.quick else {}), **parse_set(a.set)}
        profile = load_profile(a.profile)
        wanted = [s for s in (a.stages or (QUICK_STAGES if a.quick else "")).split(",") if s] or None
        if len({s.label for s in sizes}) != len(sizes):
            raise ScaleError(f"--sizes names a size twice: {a.sizes}")
        size_params(profile, sizes[0], overrides)  # bad overrides fail before any stage runs
        nodes = node_ram(REPO / "infra" / "ray" / "cluster.yaml")
    except (ScaleError, ConfigError) as e:
        p.error(str(e))
    base_genes = int(overrides.get("synthetic.n_genes", profile["synthetic"]["n_genes"]))
    out_dir = Path(a.out) if a.out else (None if a.quick else REPO / "benchmarks" / "results")

    run = RunRecord.start("benchmarks/scale.py", argv, root=REPO)
    work = Path(a.workdir) if a.workdir else Path(tempfile.mkdtemp(prefix="sctab-scale-"))
    rows: list[dict] = []
    try:
        for size in sizes:
            rows += run_size(size, profile, overrides, wanted, work, a.interval, a.keep,
                             echo=lambda m: print(m, file=sys.stderr, flush=True))
    except ScaleError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        if not a.keep and not a.workdir:
            shutil.rmtree(work, ignore_errors=True)
    fitted = fits(rows, base_genes)
    deps = deployments(fitted, os.cpu_count() or 1, gpu_rates()) if base_genes == PAPER["n_genes"] else []
    header = {"started": f"{run.started:%Y-%m-%d %H:%M}", "quick": a.quick, "run": run.command_text(via="bench-scale"),
              "profile": a.profile, "base_genes": base_genes, "machine": machine_text(ram=True),
              "load": run.load_summary(),
              "interval": a.interval, "overrides": ", ".join(f"{k}={v}" for k, v in overrides.items()),
              "deployments": deps, "gpu_rates": gpu_rates() if deps else None}
    text = markdown(rows, fitted, header, nodes)
    print(text)
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        stem = out_dir / f"scale-{run.started:%Y-%m-%d}"
        write_csv(rows, stem.with_suffix(".csv"))
        plot(rows, stem.with_suffix(".png"), base_genes)
        stem.with_suffix(".md").write_text(text)
        print(f"wrote {stem}.md, .csv, .png", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
