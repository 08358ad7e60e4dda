"""`make tune-baselines`: Ray Tune + Optuna studies and the default-versus-tuned table (paper, Supp. Table 4)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from sctab.config import ConfigError, load_params, update_params_file
from sctab.io import write_json
from sctab.params_schema import section


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Tune baselines with Ray Tune + Optuna (search spaces in conf/tune/<model>.yaml; trial count, "
        "concurrency and CPUs per trial in params.yaml `tune`). Each study is an MLflow parent run in experiment "
        "tune-<model> with one nested run per trial, and is kept in ray_results/tune-<model>: running again "
        "resumes an interrupted study without repeating finished trials (--fresh starts over). Writes "
        "<out>/<model>.json, <out>/summary.json (a DVC metrics file) and <out>/summary.md: the test macro F1 with "
        "the library's default settings, the params.yaml settings and the best trial's settings.")
    parser.add_argument("--model", action="append", choices=["xgboost", "celltypist", "linear", "mlp", "sctab"],
                        help="model to tune (repeatable; default: params.yaml tune.models)")
    parser.add_argument("--params", default="params.yaml", help="YAML parameter file (default: %(default)s)")
    parser.add_argument("--store", default="data/store", help="training store (default: %(default)s)")
    parser.add_argument("--pca", default="data/pca", help="pca stage output, XGBoost's input (default: %(default)s)")
    parser.add_argument("--augmentations", default="data/augment", help="augment stage output (default: %(default)s)")
    parser.add_argument("--space", help="search space file (only with one --model; default conf/tune/<model>.yaml)")
    parser.add_argument("--out", default="reports/tune", help="where the summaries go (default: %(default)s)")
    parser.add_argument("--num-samples", type=int, help="trials per study (default: params.yaml tune.num_samples)")
    parser.add_argument("--max-concurrent", type=int, help="trials at once (default: params.yaml tune.max_concurrent)")
    parser.add_argument("--fresh", action="store_true", help="discard a previous study of the model and start over")
    parser.add_argument("--no-reference-runs", action="store_true",
                        help="skip the default-settings and params.yaml-settings runs (no comparison columns)")
    parser.add_argument("--write-params", action="store_true",
                        help="write each study's best settings into params.yaml (models.<model>) so `dvc repro` uses "
                        "them")
    parser.add_argument("--apply-only", action="store_true",
                        help="do not tune: write the best settings of the studies already in --out into params.yaml")
    args = parser.parse_args(argv)

    # Ray Tune, Optuna, torch and MLflow: imported after argument parsing, so that --help stays instant
    from sctab.train.search_space import SearchSpaceError, load_search_space
    from sctab.train.tune import StudyError, comparison_markdown, run_study, seed_spreads

    try:
        params = load_params(args.params)
        models = args.model or list(section(params, "tune.models"))
        if not models:
            raise ConfigError("no model to tune: give --model or set tune.models in params.yaml")
        if args.space and len(models) != 1:
            raise ConfigError("--space needs exactly one --model")
        out = Path(args.out)
        if args.apply_only:
            for m in models:
                _write_back(args.params, m, _read_summary(out, m))
            return 0
        for m in models:
            space = load_search_space(m, args.space) if args.space else None
            summary = run_study(m, params, store=args.store, pca_dir=args.pca, augmentations=args.augmentations,
                                space=space, fresh=args.fresh, num_samples=args.num_samples,
                                max_concurrent=args.max_concurrent, reference_runs=not args.no_reference_runs)
            _write_summary(out, m, summary)
            t = summary["trials"]
            print(f"{m}: best trial {summary['best_trial']} val F1 {summary['tuned']['val_f1_macro']:.4f} "
                  f"test F1 {summary['tuned']['test_f1_macro']:.4f} ({t['finished']} finished, {t['stopped early']} "
                  f"stopped early, {t['failed']} failed; {summary['seconds']:.0f} s; MLflow parent run "
                  f"{summary['parent_run_id']})", flush=True)
            if args.write_params:
                _write_back(args.params, m, summary)
        summaries = {p.stem: json.loads(p.read_text()) for p in sorted(out.glob("*.json"))
                     if p.stem not in ("summary",)}
        table = comparison_markdown(summaries, seed_spreads("models"))
        (out / "summary.md").write_text("# Default versus tuned settings (Supp. Table 4 analogue)\n\n" + table)
        (out / "summary.json").write_text(json.dumps(_metrics(summaries), indent=2, sort_keys=True) + "\n")
        print(table)
        return 0
    except (ConfigError, SearchSpaceError, StudyError, FileNotFoundError) as e:
        print(f"tune: error: {e}", file=sys.stderr)
        return 2


def _read_summary(out: Path, model: str) -> dict:
    path = out / f"{model}.json"
    if not path.exists():
        raise FileNotFoundError(f"no study summary {path}: run `make tune-baselines` first")
    return json.loads(path.read_text())


def _write_summary(out: Path, model: str, summary: dict) -> None:
    write_json(out / f"{model}.json", summary)


def _write_back(params_path: str, model: str, summary: dict) -> None:
    best = summary["best_config"]
    old = update_params_file(params_path, f"models.{model}", best)
    changes = ", ".join(f"{k}: {old.get(k)!r} -> {v!r}" for k, v in best.items() if k in old) or "no change"
    print(f"{params_path} models.{model}: {changes} (tuned in study {summary['parent_run_id']}; "
          f"`dvc repro` retrains with these)")


def _metrics(summaries: dict) -> dict:
    """Flat numbers per model for `dvc metrics show`."""
    out = {}
    for m, s in summaries.items():
        row = {}
        for role in ("default", "params", "tuned"):
            for k in ("val_f1_macro", "test_f1_macro"):
                v = (s.get(role) or {}).get(k)
                if v is not None:
                    row[f"{role}_{k}"] = round(float(v), 4)
        row.update({f"trials_{k.replace(' ', '_')}": v for k, v in s["trials"].items()})
        out[m] = row
    return out


if __name__ == "__main__":
    sys.exit(main())
