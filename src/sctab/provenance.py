"""Where a figure or a model came from: the git state of the source, the machine and its load, the allocator.

One module so that every results file, every bench header and every tracked run spells these the same way.
"Dirty" means that a *source* path changed (code, params, the DAG, conf/, the benches): ``dvc repro`` rewrites
``dvc.lock`` and the committed reports as it runs, and a model trained by a fresh clone's ``make repro`` is
still a model of a clean commit.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

#: paths whose uncommitted changes make a commit "dirty": what decides what the code does
SOURCE_PATHS = ("src", "pipelines", "conf", "benchmarks", "infra", "dvc.yaml", "params.yaml", "pyproject.toml",
                "Makefile")
#: inside SOURCE_PATHS but written by the tools themselves
GENERATED_PATHS = ("benchmarks/results",)
DIRTY = "-dirty"
UNKNOWN = "unknown"


@dataclass(frozen=True)
class GitState:
    """HEAD of a checkout and the source paths that differ from it (empty: clean)."""

    sha: str | None
    changed: tuple[str, ...] = ()

    @property
    def dirty(self) -> bool:
        return bool(self.changed)

    def label(self, short: bool = False) -> str:
        """``<sha>`` or ``<sha>-dirty``; ``unknown`` outside a git checkout."""
        if self.sha is None:
            return UNKNOWN
        return (self.sha[:10] if short else self.sha) + (DIRTY if self.dirty else "")


def git_state(root: str | os.PathLike | None = None) -> GitState:
    """The checkout at ``root`` (default: the working directory); tracked source files only."""
    cwd = Path(root or os.getcwd())
    spec = [*SOURCE_PATHS, *(f":(exclude){p}" for p in GENERATED_PATHS)]
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True,
                             check=True).stdout.strip()
        top = Path(subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=cwd, capture_output=True, text=True,
                                  check=True).stdout.strip())
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", *spec], cwd=top,
                                capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return GitState(None)
    return GitState(sha, tuple(line[3:] for line in status.splitlines() if line.strip()))


def git_commit(root: str | os.PathLike | None = None, short: bool = False) -> str:
    """The label of :func:`git_state`: what runs are tagged with and results headers print."""
    return git_state(root).label(short=short)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def load_text(avg: tuple[float, ...] | None = None) -> str:
    """Load average (1, 5, 15 min) as ``a, b, c``; now when not given."""
    return ", ".join(f"{v:.1f}" for v in (os.getloadavg() if avg is None else avg))


def allocator_text() -> str:
    from sctab.allocator import ENV, mode

    if mode() == "system":
        return f"glibc's defaults in every part ({ENV}=system)"
    return ("every part, ours and baseline, keeps freed memory for reuse, as the sctab entry points that train or "
            f"predict do (sctab.allocator; {ENV}=system for glibc's defaults)")


def machine_text(ram: bool = False) -> str:
    """CPU model, architecture, cores, (RAM,) and torch with its thread count when torch is loaded."""
    parts = [cpu_model(), platform.machine(), f"{os.cpu_count()} CPU cores"]
    if ram:
        import psutil

        parts.append(f"{psutil.virtual_memory().total / 2**30:.0f} GiB RAM")
    torch = sys.modules.get("torch")
    if torch is not None:
        parts.append(f"torch {torch.__version__} ({torch.get_num_threads()} threads)")
    else:
        try:
            parts.append(f"torch {metadata.version('torch')}")
        except metadata.PackageNotFoundError:
            pass
    return ", ".join(parts)


@dataclass
class RunRecord:
    """What a results file says about the run that wrote it; start it before the first row is measured."""

    script: str
    argv: list[str]
    root: Path | None = None
    started: dt.datetime = field(default_factory=dt.datetime.now)
    load_start: tuple[float, ...] = field(default_factory=os.getloadavg)
    _t0: float = field(default_factory=time.perf_counter)

    @classmethod
    def start(cls, script: str, argv: list[str] | None = None, root: str | os.PathLike | None = None) -> RunRecord:
        return cls(script, list(sys.argv[1:] if argv is None else argv), Path(root) if root else None)

    @property
    def command(self) -> str:
        return " ".join(shlex.quote(x) for x in [self.script, *self.argv])

    @property
    def wall_min(self) -> float:
        return (time.perf_counter() - self._t0) / 60

    def commit(self) -> str:
        return git_commit(self.root, short=True)

    def command_text(self, via: str | None = None) -> str:
        """```cmd`` (via make X); commit <sha>; wall time N min``"""
        via_make = f" (via make {via})" if via and os.environ.get("MAKELEVEL") else ""
        return f"Command: `{self.command}`{via_make}; commit {self.commit()}; wall time {self.wall_min:.1f} min"

    def load_summary(self) -> str:
        return f"load average (1, 5, 15 min) {load_text(self.load_start)} at the start, {load_text()} at the end"

    def as_dict(self) -> dict:
        """The results-JSON header every bench writes (``sctab.bench.summary`` reads these keys)."""
        return {"command": self.command, "commit": self.commit(),
                "started": self.started.isoformat(timespec="seconds"), "wall_s": self.wall_min * 60,
                "load_start": list(self.load_start), "load_end": list(os.getloadavg()), "machine": machine_text()}
