"""`make census-realism`: the embedded census beside real 10x data shipped in packages (table, JSON, figure)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from sctab.config import ConfigError, load_params
from sctab.params_schema import section


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Measure the embedded census of params.yaml (generated in memory, primary 10x cells) and real "
        "10x data shipped inside packages (scMARK cells from the pyPLNmodels wheel, downloaded once with pip into "
        "--cache; scanpy's pbmc68k_reduced) with the same statistics: UMIs and genes detected per cell, the genes' "
        "mean-variance relation and kNN label purity on a PCA. Writes <out>/realism.md, realism.json and "
        "realism.png. The embedded census is a test bed: this says how close its statistics are, not that its "
        "figures are biology.")
    parser.add_argument("--params", default="params.yaml", help="YAML parameter file (default: %(default)s)")
    parser.add_argument("--out", default="reports/census", help="output folder (default: %(default)s)")
    parser.add_argument("--cache", default="benchmarks/.cache/real-data",
                        help="where the pyPLNmodels wheel is kept (default: %(default)s)")
    args = parser.parse_args(argv)

    from sctab.evaluate.census_realism import (
        RealDataError,
        embedded_stats,
        figure,
        markdown,
        pbmc68k_stats,
        scmark_stats,
    )

    try:
        params = load_params(args.params)
        if section(params, "census.source") != "embedded":
            raise ConfigError("census.source is not 'embedded': the comparison measures the embedded census")
        print("measuring the embedded census, its largest dataset, scMARK and pbmc68k_reduced ...", flush=True)
        stats = [embedded_stats(params), embedded_stats(params, one_dataset=True), scmark_stats(args.cache),
                 pbmc68k_stats()]
    except (ConfigError, RealDataError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table = markdown(stats)
    (out / "realism.md").write_text("# The embedded census beside real 10x data\n\n" + table)
    (out / "realism.json").write_text(json.dumps([s.row() for s in stats], indent=2) + "\n")
    figure(stats, out / "realism.png")
    print(table)
    print(f"wrote {out}/realism.md, realism.json, realism.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
