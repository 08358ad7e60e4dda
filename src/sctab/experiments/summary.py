"""An experiment's outputs: points.csv, summary.csv/.json/.md beside the paper's numbers, a figure, MLflow."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from sctab.data.store import Store
from sctab.evaluate import figures as evaluation_figures
from sctab.evaluate.metrics import AVERAGING
from sctab.evaluate.paper import PAPER
from sctab.experiments import analysis, figures
from sctab.experiments.sweep import mlflow_experiment
from sctab.io import atomic_dir
from sctab.params_schema import section
from sctab.tracking import tracked_run

HEADLINE = {
    "model-size": "scTab width against test performance (paper Fig. 2f: 0.7864 ± 0.0010 at 1.7 M parameters to "
                  "0.8323 ± 0.0010 at 16.2 M)",
    "data-size": "Random-cell versus donor subsets of train (paper Fig. 2b/2d: donor subsets scale strongly, "
                 "cell subsets weakly; scTab ahead of linear by 0.0447 ± 0.0008 at full data)",
    "augmentation": "With versus without augmentation on the 30%-of-donors subset (paper Supp. Table 3, 7)",
    "organ": "Trained on one tissue versus on all, scored on that tissue's test cells (paper Supp. Table 2)",
}


def _paper_ms(d) -> str:
    if isinstance(d, dict):
        return analysis.fmt(d["mean"], d.get("std"))
    return f"{d}"


def summarise_experiment(name: str, table: pd.DataFrame, params: dict, out_dir: str | Path, *,
                         store: str | Path = "data/store", augmentations: str | Path | None = None) -> Path:
    """Write the experiment's tables and figure to ``out_dir`` and attach them to its MLflow experiment."""
    profile = str(section(params, "profile") or "?")
    out_dir = Path(out_dir)
    extra: dict = {}
    with atomic_dir(out_dir) as tmp:
        table.to_csv(tmp / "points.csv", index=False)
        ok = table[table["status"] == "finished"]
        if name == "model-size":
            summary = analysis.model_size_summary(table)
            figures.scaling_curve(ok, "n_params", tmp / "model_size.png", xlog=True, profile=profile,
                                  title="scTab model size (Fig. 2f analogue)")
            paper = "\n".join(f"- paper, {k}: {_paper_ms(v)} ({v.get('n_params', 0) / 1e6:.1f} M parameters)"
                              for k, v in PAPER["model_size"].items())
            if len(ok):
                big, small = int(ok["n_d"].max()), int(ok["n_d"].min())
                pairs = [analysis.paired_difference(table, "n_d", big, small, metric=m) for m in analysis.METRICS]
                extra["paired"] = pairs
                paper += "".join(f"\n- here, widest minus narrowest (n_d {big} vs {small}): "
                                 f"{analysis.describe_difference(d)}" for d in pairs)
        elif name == "data-size":
            store_obj = Store(store)
            ok = ok.assign(train_cells=[len(store_obj.train_subset(f"{s}_{f}")) for s, f in
                                        zip(ok["scheme"], ok["fraction"])],
                           series=[f"{m} ({s})" for m, s in zip(ok["model"], ok["scheme"])])
            summary = analysis.data_size_summary(table)
            figures.scaling_curve(ok, "train_cells", tmp / "data_size.png", hue="series", xlog=True, profile=profile,
                                  title="Training data size: cells vs donors (Fig. 2b/2d analogue)")
            paper = "- paper: " + "; ".join(f"{k}: {_paper_ms(v)}" for k, v in PAPER["data_scaling"].items())
            paper += _data_size_findings(table, ok, store_obj, tmp, profile, extra)
        elif name == "augmentation":
            summary, tests = analysis.augmentation_summary(table)
            extra["paired_tests"] = tests
            if augmentations:
                extra["explained_variance"] = analysis.explained_variance(
                    Store(store), augmentations, section(params, "experiments.augmentation.r2_cells"),
                    clip=tuple(section(params, "train.augment_clip")))
            figures.paired_comparison(ok, tmp / "augmentation.png", profile=profile)
            pa = PAPER["augmentation"]
            lines = [f"- paired t-test over seeds, {m}: mean difference (with - without) "
                     f"{t.get('mean_difference', float('nan')):+.4f}, p = {t['p_value']:.4g} ({t['pairs']} pairs)"
                     for m, t in tests.items()]
            lines.append(f"- paper: loss {_paper_ms(pa['test_loss_with_augmentation'])} with vs "
                         f"{_paper_ms(pa['test_loss_without_augmentation'])} without (p {pa['p_value_test_loss']}); "
                         f"F1 {_paper_ms(pa['test_f1_macro_with_augmentation'])} vs "
                         f"{_paper_ms(pa['test_f1_macro_without_augmentation'])} (p {pa['p_value_test_f1_macro']})")
            ev = extra.get("explained_variance")
            if ev:
                pv = PAPER["variance_decomposition"]
                lines.append(f"- R^2 of cell type + donor (Supp. Table 7): {ev['r2_original']:.3f} original vs "
                             f"{ev['r2_augmented']:.3f} augmented on {ev['cells']:,} train cells (paper "
                             f"{pv['r2_original']} vs {pv['r2_augmented']})")
            paper = "\n".join(lines)
        else:
            summary = analysis.organ_summary(table)
            tissue = section(params, "experiments.organ.tissue")
            per_model = {m: {t: float(g["tissue_test_f1_macro"].mean()) for t, g in d.groupby("training")}
                         for m, d in ok.groupby("model")}
            evaluation_figures.organ_f1(per_model, tmp / "organ.png", models=tuple(sorted(ok["model"].unique())),
                                        profile=profile)
            paper = "- paper (lung): " + "; ".join(f"{k}: {_paper_ms(v)}" for k, v in PAPER["lung_holdout"].items())
            paper += f"\n- here: test cells with tissue_general = {tissue}"
            paper += _organ_findings(table, extra)
            rule = _tissue_rule(table)
            extra["tissue_f1_average_over"] = rule
            paper += (f"\n- tissue macro F1: averaged over {AVERAGING[rule]} (average_over={rule}"
                      + ("; as the published code scored a subset: sklearn labels=np.unique(y_true)"
                         if rule == "truth" else "") + "); predictions ontology-corrected")
        summary.to_csv(tmp / "summary.csv", index=False)
        (tmp / "summary.json").write_text(json.dumps({"experiment": name, "profile": profile,
                                                      "summary": summary.to_dict(orient="records"), **extra},
                                                     indent=2, default=float) + "\n")
        md = [f"# {HEADLINE[name]}", "", f"Profile: **{profile}** (the paper's numbers are for the full census).",
              "", _markdown_table(summary), "", paper, ""]
        failed = table[table["status"] != "finished"]["point"].tolist()
        if failed:
            md.append(f"Failed points: {', '.join(failed)}")
        (tmp / "summary.md").write_text("\n".join(md) + "\n")
    _log(name, out_dir, params)
    return out_dir


def _data_size_findings(table, ok, store_obj, tmp: Path, profile: str, extra: dict) -> str:
    """scTab minus linear at full data, cells vs donors at the smallest subset (paired over seeds), and the
    per-organ scaling of Fig. 2c (figure, table and the paper's three numbers)."""
    lines, pairs = [], []
    full = int(ok["fraction"].max()) if len(ok) else 100
    smallest = int(ok["fraction"].min()) if len(ok) else 15
    models = set(ok["model"]) if len(ok) else set()
    if {"sctab", "linear"} <= models:
        d = analysis.paired_difference(table, "model", "sctab", "linear", where={"fraction": full, "scheme": "donors"})
        pairs.append(d)
        lines.append(f"- here, at full data: {analysis.describe_difference(d)}")
    main = "sctab" if "sctab" in models else (sorted(models)[0] if models else "sctab")
    if models and {"cells", "donors"} <= set(ok["scheme"]):
        d = analysis.paired_difference(table, "scheme", "cells", "donors",
                                       where={"fraction": smallest, "model": main})
        pairs.append(d)
        lines.append(f"- here, {main} on {smallest}% subsets, random cells minus whole donors: "
                     f"{analysis.describe_difference(d)}")
    extra["paired"] = pairs
    long = analysis.organ_scaling(ok.drop(columns=["series"], errors="ignore"))
    if len(long):
        long.to_csv(tmp / "organ_scaling.csv", index=False)
        figures.organ_scaling(long, tmp / "organ_scaling.png", model=main, profile=profile)
        f = analysis.organ_scaling_findings(long, model=main)
        extra["organ_scaling"] = f
        if f:
            lines.append(
                f"- here, per organ system (Fig. 2c, {main} on donor subsets, {f['smallest_fraction']}% -> "
                f"{f['full_fraction']}%): {f['organs_gaining']} of {f['organs']} systems gain; smallest gain "
                f"{analysis.fmt(f['gain_min']['mean'], f['gain_min']['std'])} ({f['gain_min']['organ']}), median "
                f"{analysis.fmt(f['gain_median']['mean'], f['gain_median']['std'])} ({f['gain_median']['organ']}); "
                f"correlation of full-data organ F1 with its number of cell types {f['corr_f1_vs_n_types']:.2f}")
    return "".join("\n" + line for line in lines)


def _organ_findings(table: pd.DataFrame, extra: dict) -> str:
    """Per model, cross-organ minus tissue-only on the tissue's test cells, and the models' drops compared."""
    metric = "tissue_test_f1_macro"
    lines, pairs = [], []
    ok = table[table["status"] == "finished"]
    drops = {}
    for model in sorted(set(ok["model"])):
        d = analysis.paired_difference(table, "training", "cross-organ", next(
            (t for t in set(ok["training"]) if t.endswith(" only")), "only"), metric=metric, where={"model": model})
        pairs.append({"model": model, **d})
        lines.append(f"- here, {model}: {analysis.describe_difference(d)}")
        sub = ok[ok["model"] == model].pivot_table(index="seed", columns="training", values=metric)
        if sub.shape[1] == 2:
            drops[model] = sub[[c for c in sub.columns if c.endswith(" only")][0]] - sub["cross-organ"]
    if {"sctab", "linear"} <= set(drops):
        both = pd.DataFrame({"model": ["sctab"] * len(drops["sctab"]) + ["linear"] * len(drops["linear"]),
                             "seed": list(drops["sctab"].index) + list(drops["linear"].index),
                             "drop": list(drops["sctab"].values) + list(drops["linear"].values),
                             "status": "finished"})
        d = analysis.paired_difference(both, "model", "linear", "sctab", metric="drop")
        pairs.append({"model": "linear vs sctab", **d})
        lines.append(f"- here, the linear model's drop (tissue-only minus cross-organ) minus scTab's: "
                     f"{analysis.describe_difference(d)} (paper: 0.1855 vs 0.0158)")
    extra["paired"] = pairs
    return "".join("\n" + line for line in lines)


def _tissue_rule(table: pd.DataFrame) -> str:
    """The one averaging rule the points' tissue macro F1 used (each point records its own)."""
    rules = sorted(set(table["tissue_f1_average_over"].dropna())) if "tissue_f1_average_over" in table else []
    if len(rules) != 1:
        raise ValueError(f"the organ points name {rules or 'no'} tissue macro F1 averaging rule(s); expected one")
    return rules[0]


def _markdown_table(df: pd.DataFrame) -> str:
    """Group columns as they are, each metric as one "mean ± std" column."""
    cols = [c for c in df.columns if not c.endswith(("_mean", "_std"))]
    metrics = [c[:-len("_mean")] for c in df.columns if c.endswith("_mean")]
    head = cols + [m.replace("_", " ") for m in metrics]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in df.astype(object).to_dict(orient="records"):
        cells = [f"{int(r[c]):,}" if isinstance(r[c], (int, np.integer)) else str(r[c]) for c in cols]
        cells += [analysis.fmt(r[f"{m}_mean"], r.get(f"{m}_std")) for m in metrics]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _log(name: str, out_dir: Path, params: dict) -> None:
    """The summary as a run of its own in the experiment (role=summary): table, markdown, figure."""
    with tracked_run(mlflow_experiment(name), name=f"{mlflow_experiment(name)} summary", params=params,
                     tags={"role": "summary", "experiment_name": name}) as run:
        run.log_folder(out_dir)
