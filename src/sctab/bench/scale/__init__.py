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

The parts: ``sizes`` (what each size runs), ``dag`` (the stages), ``measure`` (running them under the
memory sampler), ``fit`` (growth, flags, extrapolation, deployments) and ``report`` (CSV, figure, markdown).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

from sctab.bench.scale.fit import deployments, fits, gpu_rates, node_ram
from sctab.bench.scale.measure import run_size
from sctab.bench.scale.report import markdown, plot, write_csv
from sctab.bench.scale.sizes import (
    DEFAULT_SIZES,
    PAPER,
    QUICK_SET,
    QUICK_SIZES,
    QUICK_STAGES,
    REPO,
    ScaleError,
    Size,
    parse_set,
    size_params,
)
from sctab.provenance import RunRecord, machine_text

#: `--help`'s description
DESCRIPTION = ("Scale curve (make bench-scale): run every stage of dvc.yaml on the embedded census at several "
               "sizes, record each stage's wall time and the peak RSS of its whole process tree, fit how both grow "
               "with cells, flag what grows too fast and extrapolate to the paper's census (22.2 M cells) and the "
               "nodes of infra/ray/cluster.yaml. Writes benchmarks/results/scale-<date>.md, .csv and .png.")

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="benchmarks/scale.py", description=DESCRIPTION)
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
    from sctab.params_schema import section

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
    base_genes = int(overrides.get("synthetic.n_genes", section(profile, "synthetic.n_genes")))
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
