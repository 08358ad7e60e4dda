"""Pipeline stage `train_<model>`: train linear, MLP or the scTab deep ensemble on Ray Train, tracked in MLflow."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from sctab.config import load_params


def main(argv: list[str] | None = None) -> None:
    from sctab.tracking.runs import TrackingServerError

    try:
        _main(argv)
    except TrackingServerError as e:
        print(f"train: error: {e}", file=sys.stderr)
        sys.exit(2)


def _main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Train one model of the paper (settings in params.yaml: `train` for the runner, "
        "`models.<model>` for optimisation and architecture, `ensemble.seeds` for --ensemble). Runs on Ray Train "
        "(local Ray, or the cluster at RAY_ADDRESS), logs to MLflow (sqlite:///mlruns/mlflow.db unless "
        "MLFLOW_TRACKING_URI is set) and writes the best checkpoint by validation macro F1 to --out.")
    parser.add_argument("--model", required=True, choices=["linear", "mlp", "sctab"], help="which model")
    parser.add_argument("--params", default="params.yaml", help="YAML parameter file (default: %(default)s)")
    parser.add_argument("--store", default="data/store", help="training store (default: %(default)s)")
    parser.add_argument("--augmentations", default="data/augment",
                        help="augment stage output, used when models.<model>.augment is true (default: %(default)s)")
    parser.add_argument("--ensemble", action="store_true", help="train one member per seed in ensemble.seeds "
                        "under one parent MLflow run")
    parser.add_argument("--out", required=True, help="model folder to write (e.g. models/linear)")
    parser.add_argument("--report", help="also write the metrics JSON here (a DVC metrics file)")
    parser.add_argument("--experiment", default="train", help="MLflow experiment (default: %(default)s)")
    args = parser.parse_args(argv)

    from sctab.train.fit import fit, fit_ensemble
    from sctab.train.spec import spec_from_params

    params = load_params(args.params)
    spec = spec_from_params(params, args.model, store=args.store, augmentations=args.augmentations)
    t0 = time.perf_counter()
    if args.ensemble:
        seeds = list((params.get("ensemble") or {}).get("seeds") or [])
        summary = fit_ensemble(spec, params, seeds, args.out, experiment=args.experiment)
        report = {"model": args.model, **summary["ensemble"], "members_mean": summary["members_mean"],
                  "members_std": summary["members_std"], "n_members": len(seeds)}
        line = (f"{args.model} ensemble of {len(seeds)}: val F1 {summary['ensemble']['val_f1_macro']:.4f}, "
                f"test F1 {summary['ensemble']['test_f1_macro']:.4f}")
    else:
        result = fit(spec, params, args.out, experiment=args.experiment)
        m = result.metrics
        report = {"model": args.model, **{k: round(v, 6) if isinstance(v, float) else v for k, v in m.items()
                                         if k not in ("train_seconds", "train_cells_per_s")}}
        line = (f"{args.model}: best epoch {m['best_epoch']}, val F1 {m['val_f1_macro']:.4f}, test F1 "
                f"{m['test_f1_macro']:.4f}, {m['train_cells_per_s']:,.0f} cells/s (MLflow run {result.run_id})")
    if args.report:
        from sctab.io import write_json

        write_json(Path(args.report), report)
    print(f"{line}; {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
