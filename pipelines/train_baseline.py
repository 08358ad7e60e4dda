"""Pipeline stage `train_xgboost` / `train_celltypist`: the paper's baselines, tracked in MLflow."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from sctab.config import load_params


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Train a baseline of the paper with the settings in params.yaml (`models.<model>`): XGBoost "
        "on the pca stage's embedding (multi:softprob, class-weighted, early stopping on val) or CellTypist "
        "(celltypist.train on a random subsample of train). Scores val/test with the ontology-corrected macro "
        "F1, logs an MLflow run (sqlite:///mlruns/mlflow.db unless MLFLOW_TRACKING_URI is set) and writes the "
        "model folder to --out.")
    parser.add_argument("--model", required=True, choices=["xgboost", "celltypist"], help="which baseline")
    parser.add_argument("--params", default="params.yaml", help="YAML parameter file (default: %(default)s)")
    parser.add_argument("--store", default="data/store", help="training store (default: %(default)s)")
    parser.add_argument("--pca", default="data/pca", help="pca stage output, XGBoost's input (default: %(default)s)")
    parser.add_argument("--out", required=True, help="model folder to write (e.g. models/xgboost)")
    parser.add_argument("--report", help="also write the metrics JSON here (a DVC metrics file)")
    parser.add_argument("--experiment", default="train", help="MLflow experiment (default: %(default)s)")
    args = parser.parse_args(argv)

    from sctab.io import write_json
    from sctab.train.baselines import fit_baseline

    params = load_params(args.params)
    t0 = time.perf_counter()
    result = fit_baseline(args.model, params, store=args.store, pca_dir=args.pca, out_dir=args.out,
                          experiment=args.experiment)
    m = result.metrics
    if args.report:
        write_json(Path(args.report), {"model": args.model, **{k: round(float(v), 6) if isinstance(v, float) else v
                                                              for k, v in m.items() if k != "train_seconds"}})
    extra = f", {m['best_rounds']} rounds" if "best_rounds" in m else f", {m.get('n_features', '?')} genes kept"
    print(f"{args.model}: val F1 {m['val_f1_macro']:.4f}, test F1 {m['test_f1_macro']:.4f}{extra}, "
          f"{m['train_cells']:,} training cells, fit {m['train_seconds']:.0f} s (MLflow run {result.run_id}); "
          f"{time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
