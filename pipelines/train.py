"""Pipeline stages `train_<model>`: one entry for the paper's five models, tracked in MLflow.

linear, MLP and the scTab deep ensemble train on Ray Train (sctab.train.fit); the XGBoost and CellTypist
baselines in process (sctab.train.baselines.fit_baseline). dvc.yaml runs this script for all five.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from sctab.config import load_params
from sctab.io import write_json
from sctab.tracking.runs import TrackingServerError

NEURAL = ("linear", "mlp", "sctab")
BASELINES = ("xgboost", "celltypist")


def main(argv: list[str] | None = None) -> None:
    try:
        _main(argv)
    except TrackingServerError as e:
        print(f"train: error: {e}", file=sys.stderr)
        sys.exit(2)


def _main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Train one model of the paper (settings in params.yaml: `train` for the runner, "
        "`models.<model>` for optimisation and architecture, `ensemble.seeds` for --ensemble). linear, mlp and "
        "sctab run on Ray Train (local Ray, or the cluster at RAY_ADDRESS) and keep the best checkpoint by "
        "validation macro F1; the baselines xgboost (on the pca stage's embedding, early stopping on val) and "
        "celltypist (on a random subsample of train) run in process. Every model is scored with the "
        "ontology-corrected macro F1, logged to MLflow (sqlite:///mlruns/mlflow.db unless MLFLOW_TRACKING_URI "
        "is set) and written to --out.")
    parser.add_argument("--model", required=True, choices=[*NEURAL, *BASELINES], help="which model")
    parser.add_argument("--params", default="params.yaml", help="YAML parameter file (default: %(default)s)")
    parser.add_argument("--store", default="data/store", help="training store (default: %(default)s)")
    parser.add_argument("--augmentations", default="data/augment",
                        help="augment stage output, used when models.<model>.augment is true (default: %(default)s)")
    parser.add_argument("--pca", default="data/pca", help="pca stage output, XGBoost's input (default: %(default)s)")
    parser.add_argument("--ensemble", action="store_true", help="train one member per seed in ensemble.seeds "
                        "under one parent MLflow run (linear, mlp, sctab)")
    parser.add_argument("--out", required=True, help="model folder to write (e.g. models/linear)")
    parser.add_argument("--report", help="also write the metrics JSON here (a DVC metrics file)")
    parser.add_argument("--experiment", default="train", help="MLflow experiment (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.ensemble and args.model in BASELINES:
        parser.error(f"--ensemble trains deep ensembles; {args.model} is a baseline")

    params = load_params(args.params)
    t0 = time.perf_counter()
    if args.model in BASELINES:
        report, line = _baseline(args, params)
    else:
        report, line = _neural(args, params)
    if args.report:
        write_json(Path(args.report), report)
    print(f"{line}; {time.perf_counter() - t0:.0f} s")


def _neural(args, params: dict) -> tuple[dict, str]:
    # torch, Ray and MLflow: imported once the arguments are parsed, so that --help stays instant
    from sctab.train.fit import fit, fit_ensemble
    from sctab.train.spec import spec_from_params

    spec = spec_from_params(params, args.model, store=args.store, augmentations=args.augmentations)
    if args.ensemble:
        seeds = list((params.get("ensemble") or {}).get("seeds") or [])
        summary = fit_ensemble(spec, params, seeds, args.out, experiment=args.experiment)
        report = {"model": args.model, **summary["ensemble"], "members_mean": summary["members_mean"],
                  "members_std": summary["members_std"], "n_members": len(seeds)}
        return report, (f"{args.model} ensemble of {len(seeds)}: val F1 {summary['ensemble']['val_f1_macro']:.4f}, "
                        f"test F1 {summary['ensemble']['test_f1_macro']:.4f}")
    result = fit(spec, params, args.out, experiment=args.experiment)
    m = result.metrics
    report = {"model": args.model, **{k: round(v, 6) if isinstance(v, float) else v for k, v in m.items()
                                     if k not in ("train_seconds", "train_cells_per_s")}}
    return report, (f"{args.model}: best epoch {m['best_epoch']}, val F1 {m['val_f1_macro']:.4f}, test F1 "
                    f"{m['test_f1_macro']:.4f}, {m['train_cells_per_s']:,.0f} cells/s (MLflow run {result.run_id})")


def _baseline(args, params: dict) -> tuple[dict, str]:
    from sctab.train.baselines import fit_baseline  # XGBoost, CellTypist and MLflow: after --help, as above

    result = fit_baseline(args.model, params, store=args.store, pca_dir=args.pca, out_dir=args.out,
                          experiment=args.experiment)
    m = result.metrics
    report = {"model": args.model, **{k: round(float(v), 6) if isinstance(v, float) else v
                                     for k, v in m.items() if k != "train_seconds"}}
    extra = f", {m['best_rounds']} rounds" if "best_rounds" in m else f", {m.get('n_features', '?')} genes kept"
    return report, (f"{args.model}: val F1 {m['val_f1_macro']:.4f}, test F1 {m['test_f1_macro']:.4f}{extra}, "
                    f"{m['train_cells']:,} training cells, fit {m['train_seconds']:.0f} s (MLflow run "
                    f"{result.run_id})")


if __name__ == "__main__":
    main()
