"""Pipeline stage `tune`: Ray Tune + Optuna studies before the train stages when params.yaml tune.in_dag is true."""

from __future__ import annotations

import argparse
import sys

from sctab.config import ConfigError, load_params


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="The DAG's tuning stage. With tune.in_dag false (the default) it only records that nothing was "
        "tuned, and the train stages use models.<model> of params.yaml. With tune.in_dag true it runs a fresh Ray "
        "Tune + Optuna study for each model of tune.models (search spaces in conf/tune/<model>.yaml, "
        "tune.num_samples trials, at most tune.time_budget_s seconds per study; each trial an MLflow run in "
        "experiment tune-<model>) and writes each best trial's settings to <out>/tuned.json, which the train "
        "stages apply on top of models.<model>.")
    parser.add_argument("--params", default="params.yaml", help="YAML parameter file (default: %(default)s)")
    parser.add_argument("--store", default="data/store", help="training store (default: %(default)s)")
    parser.add_argument("--pca", default="data/pca", help="pca stage output, XGBoost's input (default: %(default)s)")
    parser.add_argument("--augmentations", default="data/augment", help="augment stage output (default: %(default)s)")
    parser.add_argument("--out", default="data/tuned", help="output folder (default: %(default)s)")
    args = parser.parse_args(argv)

    from sctab.train.tuned import run_tune_stage

    try:
        record = run_tune_stage(load_params(args.params), store=args.store, pca_dir=args.pca,
                                augmentations=args.augmentations, out=args.out)
    except ConfigError as e:
        print(f"tune: error: {e}", file=sys.stderr)
        return 2
    if not record["in_dag"]:
        print("tune: tune.in_dag is false: nothing tuned, the train stages use models.<model> as they are")
    for m, cfg in record["models"].items():
        print(f"tune {m}: best settings " + ", ".join(f"{k} {v!r}" for k, v in sorted(cfg.items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
