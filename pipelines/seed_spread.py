"""`make seed-spread`: every model's test macro F1 over seeds, as mean ± sd (outside the default DAG)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from sctab.config import ConfigError, load_params
from sctab.params_schema import section


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Train each single model (linear, MLP, XGBoost, CellTypist) again with the other seeds of "
        "params.yaml ensemble.seeds (the first --seeds of them; the train stage's model is the first) in this "
        "process, and write their test and validation macro F1 as mean ± sd to <out>/<model>.json and "
        "<out>/summary.md; the scTab ensemble's spread is that of its members (models/sctab/ensemble.json). "
        "Each extra fit is an MLflow run tagged role=seed_spread. The default-vs-tuned table of "
        "`make tune-baselines` reads these files to say whether a tuning gain exceeds the seed spread.")
    parser.add_argument("--params", default="params.yaml", help="YAML parameter file (default: %(default)s)")
    parser.add_argument("--models", default="models", help="the train stages' model folders (default: %(default)s)")
    parser.add_argument("--store", default="data/store", help="training store (default: %(default)s)")
    parser.add_argument("--augmentations", default="data/augment", help="augment stage output (default: %(default)s)")
    parser.add_argument("--pca", default="data/pca", help="pca stage output (default: %(default)s)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per model, the model's own included "
                        "(default: %(default)s)")
    parser.add_argument("--model", action="append", choices=["linear", "mlp", "xgboost", "celltypist"],
                        help="only this model (repeatable; default: all four)")
    parser.add_argument("--out", default="reports/seeds", help="where the spreads go (default: %(default)s)")
    args = parser.parse_args(argv)

    # torch, MLflow and the models: after --help
    from sctab.train.fitting import FitResult, seed_spread, spread_of
    from sctab.train.spec import make_spec

    try:
        params = load_params(args.params)
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        rows = {}
        for model in args.model or ["linear", "mlp", "xgboost", "celltypist"]:
            folder = Path(args.models) / model
            if not (folder / "metrics.json").is_file():
                raise FileNotFoundError(f"{folder}/metrics.json is missing: run `make repro` (or dvc repro "
                                        f"train_{model}) first")
            spec = make_spec(params, model, store=args.store, augmentations=args.augmentations, pca_dir=args.pca)
            seeds = [int(spec.seed)] + [int(s) for s in section(params, "ensemble.seeds")
                                        if int(s) != int(spec.seed)]
            first = FitResult(run_id="", out_dir=None, metrics=json.loads((folder / "metrics.json").read_text()),
                              classifier=None)
            rows[model] = seed_spread(spec, params, first, seeds[:args.seeds], experiment="seed-spread")
            (out / f"{model}.json").write_text(json.dumps(rows[model], indent=2, sort_keys=True) + "\n")
            t = rows[model]["test_f1_macro"]
            print(f"{model}: test macro F1 over seeds {rows[model]['seeds']}: {t['mean']:.4f} ± {t['sd']:.4f}",
                  flush=True)
        ens = Path(args.models) / "sctab" / "ensemble.json"
        lines = ["| model | seeds | test macro F1 (mean ± sd) | values |", "|---|---|---|---|"]
        for model, r in rows.items():
            t = r["test_f1_macro"]
            lines.append(f"| {model} | {', '.join(map(str, r['seeds']))} | {t['mean']:.4f} ± {t['sd']:.4f} | "
                         f"{', '.join(f'{v:.4f}' for v in t['values'])} |")
        if ens.is_file():
            summary = json.loads(ens.read_text())
            runs = summary.get("members", {})
            vals = [json.loads((Path(args.models) / "sctab" / m / "metrics.json").read_text())["test_f1_macro"]
                    for m in runs]
            s = spread_of(vals)
            lines.append(f"| sctab (a single ensemble member) | {', '.join(map(str, summary.get('seeds', [])))} | "
                         f"{s['mean']:.4f} ± {s['sd']:.4f} | {', '.join(f'{v:.4f}' for v in s['values'])} |")
        (out / "summary.md").write_text(
            "# Test macro F1 over seeds\n\nProfile: **" + str(section(params, "profile") or "?") + "**. A difference "
            "between two models, or between default and tuned settings, smaller than these spreads cannot be told "
            "from a different seed.\n\n" + "\n".join(lines) + "\n")
        print("\n".join(lines))
        return 0
    except (ConfigError, FileNotFoundError) as e:
        print(f"seed-spread: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
