"""A bench row: its figure, target and baseline (`Case`), the table's rows in order (`REGISTRY`), and the
wall-clock and CPU-time rates every case reports (`Rates`).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Callable, Optional

from sctab.bench.fixtures import Config


@dataclass
class Case:
    name: str
    figure: str
    target: Optional[float]  # ours must reach this (same unit as the samples); None = informational
    run: Optional[Callable[[str, Config], dict]]
    baseline: str = ""
    note: str = ""
    device_row: bool = False  # ours on Config.device, baseline on the CPU; run only with `--device`
    max_rss_mib: Optional[float] = None  # ours must also stay below this peak RSS to meet the target
    min_ratio: Optional[float] = None  # ours / baseline (same run) must reach this to meet the target
    baseline_venv: Optional[str] = None  # the baseline runs in this venv's python (a row skipped without it)


REGISTRY: dict[str, Case] = {}


def register(name: str, figure: str, target: Optional[float], run, baseline: str = "", note: str = "",
             device_row: bool = False, max_rss_mib: Optional[float] = None,
             min_ratio: Optional[float] = None, baseline_venv: Optional[str] = None) -> None:
    """Add (or replace) a row of the bench table."""
    REGISTRY[name] = Case(name, figure, target, run, baseline, note, device_row, max_rss_mib, min_ratio,
                          baseline_venv)


class Rates:
    """Wall-clock rates (the figures) and CPU-time rates: items / (process CPU seconds / cores), i.e. the
    rate if every core were ours. On a machine shared with other jobs the CPU-time rate shows what the
    code costs, the wall-clock one what this run got; both are reported."""

    def __init__(self):
        self.wall: list[float] = []
        self.cpu: list[float] = []
        self.cores = os.cpu_count() or 1

    def start(self) -> None:
        self._t, self._c = time.perf_counter(), time.process_time()

    def stop(self, n: int) -> None:
        self.wall.append(n / (time.perf_counter() - self._t))
        self.cpu.append(n / max((time.process_time() - self._c) / self.cores, 1e-9))

    def result(self, **kw) -> dict:
        return {"samples": self.wall, "cpu_samples": self.cpu, **kw}
