"""`make sweep-model-size | sweep-data-size | exp-augmentation | exp-organ`: the paper's experiments."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sctab.config import ConfigError, load_params

TARGETS = {"model-size": "Fig. 2f", "data-size": "Fig. 2b/2d", "augmentation": "Supp. Tables 3 and 7",
           "organ": "Supp. Table 2, Fig. 2e"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Run one of the paper's experiments on the store (grids in params.yaml `experiments`): "
        "model-size (scTab widths; test macro F1 and loss against parameter count), data-size (random-cell vs "
        "donor subsets of train, scTab and linear), augmentation (with vs without on the 30%%-of-donors subset, "
        "paired over seeds, plus the explained-variance check) or organ (trained on one tissue vs on all, "
        "scored on that tissue's test cells). Each point is a Ray Tune trial and an MLflow run (experiment "
        "sweep-<name> / exp-<name>); finished points are reused, an interrupted sweep resumes. Writes "
        "<out>/<name>/points.csv, summary.csv, summary.md and a figure.")
    parser.add_argument("name", choices=sorted(TARGETS), help="which experiment")
    parser.add_argument("--params", default="params.yaml", help="YAML parameter file (default: %(default)s)")
    parser.add_argument("--store", default="data/store", help="training store (default: %(default)s)")
    parser.add_argument("--augmentations", default="data/augment", help="augment stage output (default: %(default)s)")
    parser.add_argument("--out", default="reports/experiments", help="output folder (default: %(default)s)")
    parser.add_argument("--fresh", action="store_true", help="retrain every point, ignoring finished runs")
    args = parser.parse_args(argv)

    # Ray, torch and MLflow: imported after argument parsing, so that --help stays instant
    from sctab.experiments.summary import summarise_experiment
    from sctab.experiments.sweep import SweepError, run_experiment

    try:
        params = load_params(args.params)
        table = run_experiment(args.name, params, store=args.store, augmentations=args.augmentations,
                               fresh=args.fresh)
        out = summarise_experiment(args.name, table, params, Path(args.out) / args.name, store=args.store,
                                   augmentations=args.augmentations)
        print((out / "summary.md").read_text())
        print(f"wrote {out}")
        return 0
    except (ConfigError, SweepError, FileNotFoundError, ValueError) as e:
        print(f"experiment: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
