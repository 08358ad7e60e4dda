"""The train stages' command line (``pipelines/train.py``): any model through the one training entry."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from sctab.config import ConfigError, check_device, load_params
from sctab.io import write_json
from sctab.models import BASELINES, MODEL_NAMES
from sctab.models.device import check_cuda_build
from sctab.params_schema import section
from sctab.tracking import TrackingServerError, close_stale_runs, data_version
from sctab.train.fitting import fit, fit_ensemble, for_file, seed_spread
from sctab.train.runners import RayTrainRunner
from sctab.train.spec import make_spec
from sctab.train.tuned import tuned_overrides


def main(argv: list[str] | None = None, models=MODEL_NAMES + BASELINES) -> None:
    """Run the stage; an unreachable tracking server or a bad setting (a GPU torch cannot use) is a one-line
    error (exit 2), not a stack trace."""
    try:
        _main(argv, models)
    except (TrackingServerError, ConfigError) as e:
        print(f"train: error: {e}", file=sys.stderr)
        sys.exit(2)


def parser(models=MODEL_NAMES + BASELINES) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Train one model of the paper with the settings in params.yaml (`train` for the runner, "
        "`models.<model>` for optimisation and architecture, `ensemble.seeds` for --ensemble). scTab, the MLP and "
        "the linear model run on Ray Train (local Ray, or the cluster at RAY_ADDRESS), and so does XGBoost, "
        "data-parallel on models.xgboost.num_workers workers over the pca stage's embedding; CellTypist fits on a "
        "random subsample of train in this process. Every fit is scored on "
        "val/test with the ontology-corrected macro F1, logged to MLflow (sqlite:///mlruns/mlflow.db unless "
        "MLFLOW_TRACKING_URI is set) and written as a model folder to --out.")
    p.add_argument("--model", required=True, choices=list(models), help="which model")
    p.add_argument("--params", default="params.yaml", help="YAML parameter file (default: %(default)s)")
    p.add_argument("--store", default="data/store", help="training store (default: %(default)s)")
    p.add_argument("--augmentations", default="data/augment",
                   help="augment stage output, used when models.<model>.augment is true (default: %(default)s)")
    p.add_argument("--pca", default="data/pca", help="pca stage output, XGBoost's input (default: %(default)s)")
    p.add_argument("--ensemble", action="store_true", help="train one member per seed in ensemble.seeds "
                   "under one parent MLflow run (neural models)")
    p.add_argument("--tuned", default=None, help="the tune stage's output (data/tuned): when it tuned this model "
                   "(tune.in_dag), its best trial's settings replace those of models.<model> (default: none)")
    p.add_argument("--out", required=True, help="model folder to write (e.g. models/linear)")
    p.add_argument("--report", help="also write the metrics JSON here (a DVC metrics file)")
    p.add_argument("--experiment", default="train", help="MLflow experiment (default: %(default)s)")
    p.add_argument("--device", type=_device_arg, default=None,
                   help="auto, cpu or cuda[:N]: where the model trains and is scored (default: params' train.device "
                   "for the neural models, models.xgboost.device for XGBoost; CellTypist always uses the CPU)")
    return p


def _device_arg(value: str) -> str:
    try:
        return check_device(value, "--device")
    except ConfigError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def device_overrides(model: str, device: str | None) -> tuple[dict, dict]:
    """(runner settings, model overrides) that put ``model`` on ``device``; a GPU for CellTypist is an error."""
    if device is None:
        return {}, {}
    if model in MODEL_NAMES:
        return {"device": device}, {}
    if model == "xgboost":
        return {}, {"device": device}
    if device != "cpu" and device != "auto":
        raise ConfigError(f"--device {device}: {model} runs on the CPU only")
    return {}, {}


def _main(argv: list[str] | None = None, models=MODEL_NAMES + BASELINES) -> None:
    args = parser(models).parse_args(argv)
    params = load_params(args.params)
    check_cuda_build(args.device, "--device")  # before any run starts
    settings, overrides = device_overrides(args.model, args.device)
    tuned = tuned_overrides(args.tuned, args.model)
    if tuned:
        print(f"{args.model}: the tune stage's best settings: "
              + ", ".join(f"{k} {v!r}" for k, v in sorted(tuned.items())), flush=True)
    overrides = {**tuned, **overrides}
    spec = make_spec(params, args.model, store=args.store, augmentations=args.augmentations, pca_dir=args.pca,
                     overrides=overrides, **settings)
    # runs of this stage that a killed process left RUNNING (same model, same data version): FAILED, with why
    close_stale_runs(args.experiment, data_version=data_version(), who=f"train_{args.model}",
                     match={"model_type": [args.model, f"{args.model}-ensemble"]})
    t0 = time.perf_counter()
    if args.ensemble:
        if args.model in BASELINES:
            sys.exit(f"train: --ensemble is for the neural models ({', '.join(MODEL_NAMES)}), not {args.model}")
        seeds = list(section(params, "ensemble.seeds"))
        summary = fit_ensemble(spec, params, seeds, args.out, experiment=args.experiment)
        report = {"model": args.model, **summary["ensemble"], "members_mean": summary["members_mean"],
                  "members_std": summary["members_std"], "n_members": len(seeds)}
        line = (f"{args.model} ensemble of {len(seeds)}: val F1 {summary['ensemble']['val_f1_macro']:.4f}, "
                f"test F1 {summary['ensemble']['test_f1_macro']:.4f}")
    else:
        # XGBoost data-parallel on Ray (models.xgboost.num_workers); the neural kinds run there by default
        runner = RayTrainRunner() if args.model == "xgboost" else None
        result = fit(spec, params, args.out, experiment=args.experiment, runner=runner)
        m = result.metrics
        report = {"model": args.model, **for_file(m)}
        ens = section(params, "ensemble")
        n_spread = ens.spread_seeds
        if n_spread > 1:
            seeds = [int(spec.seed)] + [int(s) for s in ens.seeds if int(s) != int(spec.seed)]
            spread = seed_spread(spec, params, result, seeds[:n_spread], experiment=args.experiment, runner=runner)
            report["seeds"] = {k: spread[k] for k in ("seeds", "val_f1_macro", "test_f1_macro")}
        detail = (f"best epoch {m['best_epoch']}, " if "best_epoch" in m else
                  f"{m['best_rounds']} rounds, " if "best_rounds" in m else f"{m.get('n_features', '?')} genes kept, ")
        speed = f", {m['train_cells_per_s']:,.0f} cells/s" if "train_cells_per_s" in m else ""
        line = (f"{args.model}: {detail}val F1 {m['val_f1_macro']:.4f}, test F1 {m['test_f1_macro']:.4f}{speed} "
                f"(MLflow run {result.run_id})")
        if "seeds" in report:
            t = report["seeds"]["test_f1_macro"]
            line += f"; test F1 over seeds {report['seeds']['seeds']}: {t['mean']:.4f} ± {t['sd']:.4f}"
    if args.report:
        write_json(Path(args.report), report)
    print(f"{line}; {time.perf_counter() - t0:.0f} s")
