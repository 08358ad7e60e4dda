"""The `evaluate` stage: every trained model on the test split, figures, a report beside the paper.

Writes (under ``out``):
    metrics.json           per model: test macro F1, accuracy, NLL; the ensemble's uncertainty AUROC and ECE
    plots/*.csv            DVC plots: validation curves, per-class F1 vs training cells, reliability bins
    report/index.{md,html} the report, with report/figures/*.png
and logs each model's test metrics to its own MLflow run, and the report to a run in experiment `evaluate`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.decomposition import PCA
from tqdm.auto import tqdm

from sctab import models
from sctab.data.store import Store
from sctab.evaluate import figures
from sctab.evaluate.metrics import correct_predictions, evaluate_probs
from sctab.evaluate.organs import f1_by_organ
from sctab.evaluate.paper import PAPER
from sctab.evaluate.predict import predict_split_members
from sctab.evaluate.results_report import format_mean_std, side_by_side, write_report
from sctab.evaluate.structure import knn_purity
from sctab.evaluate.uncertainty import calibration, uncertainty, uncertainty_auroc
from sctab.io import atomic_dir, write_json
from sctab.models import SEEDS_FILE, Ensemble
from sctab.params_schema import section
from sctab.tracking import TrackedRun, tracked_run

ORDER = ("sctab", "xgboost", "mlp", "linear", "celltypist")


def _labels(store: Store, split: str, column: str) -> np.ndarray:
    codes = store.read_obs(split, columns=(column,))[column].to_numpy()
    return np.asarray(store.lookup(column)["label"].astype(str).tolist(), dtype=object)[codes]


def evaluate_models(models_dir: str | Path, store_path: str | Path, out: str | Path, params: dict, *,
                    embedding_cells: int = 3000, log_mlflow: bool = True, device: str = "auto") -> dict:
    """Score every model folder under ``models_dir`` on ``device`` (auto: the GPU when torch can use one);
    write metrics, plots and the report to ``out``."""
    t0 = time.perf_counter()
    store = Store(store_path)
    profile = str(section(params, "profile") or "?")
    folders = sorted((p for p in Path(models_dir).iterdir() if p.is_dir() and not p.name.startswith(".")),
                     key=lambda p: (ORDER.index(p.name) if p.name in ORDER else len(ORDER), p.name))
    if not folders:
        raise FileNotFoundError(f"no model folders under {models_dir}: run the train stages first")
    child, weights = store.child_matrix(), store.class_weights()
    tissue = _labels(store, "test", "tissue_general")
    classes = store.classes
    train_counts = np.bincount(store.read_obs("train")["cell_type"].to_numpy(), minlength=store.n_classes)

    metrics, per_organ, per_class, runs, ens = {}, {}, {}, {}, None
    spread = {}  # model -> (mean, sd, n) of a single model's test macro F1 over seeds
    for folder in tqdm(folders, desc="evaluate", unit="model", disable=None):
        # trusted: these folders are this pipeline's own train-stage outputs (CellTypist's is a pickle)
        clf = models.load(folder, device=device, trust_pickle=True)
        y, members = predict_split_members(clf, store, "test")
        p = Ensemble.mean(members) if len(members) > 1 else members[0]
        m = evaluate_probs(y, p, child, weights)
        name = folder.name
        metrics[name] = {"test_f1_macro": m["f1_macro"], "test_accuracy": m["accuracy"], "test_nll": m["nll"],
                         "test_loss": m["weighted_loss"], "test_cells": m["n_cells"]}
        per_class[name] = m["per_class_f1"]
        pred_codes = p.argmax(axis=1)
        # averaged over the types annotated in each system, as the paper's evaluation code does
        organs = f1_by_organ(y, pred_codes, tissue, child, average_over="truth")
        per_organ[name] = {o: v["f1_macro"] for o, v in organs.items()}
        runs[name] = clf.run_id
        seeds_file = folder / SEEDS_FILE
        if seeds_file.is_file():  # the train stage's seed spread of a single model
            t = json.loads(seeds_file.read_text())["test_f1_macro"]
            spread[name] = (float(t["mean"]), float(t["sd"]), len(t["values"]))
        if len(members) > 1:
            correct = correct_predictions(y, pred_codes, child) == y
            u = uncertainty(p)
            cal = calibration(1.0 - u, correct)
            member_f1 = [evaluate_probs(y, q, child)["f1_macro"] for q in members]
            spread[name] = (float(np.mean(member_f1)), float(np.std(member_f1, ddof=1)), len(member_f1))
            metrics[name].update({"uncertainty_auroc": uncertainty_auroc(u, correct), "ece": cal["ece"],
                                  "members": len(members), "members_test_f1_macro_mean": float(np.mean(member_f1)),
                                  "members_test_f1_macro_std": float(np.std(member_f1))})
            ens = {"name": name, "uncertainty": u, "correct": correct, "calibration": cal}
        if name in spread:
            mean, sd, n = spread[name]
            metrics[name].update({"seeds_test_f1_macro_mean": mean, "seeds_test_f1_macro_sd": sd, "seeds": n})
        print(f"evaluate {name}: test macro F1 {m['f1_macro']:.4f}, NLL {m['nll']:.4f}"
              + (f", uncertainty AUROC {metrics[name]['uncertainty_auroc']:.3f}, ECE {metrics[name]['ece']:.3f}"
                 if "ece" in metrics[name] else ""), flush=True)

    out = Path(out)
    plots = out / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    histories = _histories(folders)
    pd.concat([h.assign(model=k) for k, h in histories.items()], ignore_index=True).to_csv(
        plots / "validation_curves.csv", index=False)
    ref = "sctab" if "sctab" in per_class else next(iter(per_class))
    pcf = pd.DataFrame({"cell_type": classes, "train_cells": train_counts, **{f"f1_{k}": v for k, v in
                                                                            per_class.items()}})
    pcf.to_csv(plots / "per_class_f1.csv", index=False)
    with atomic_dir(out / "report") as tmp:
        figs = tmp / "figures"
        figs.mkdir()
        paper_f1 = {k: v["mean"] for k, v in PAPER["model_comparison"].items()}
        figures.model_comparison({k: v["test_f1_macro"] for k, v in metrics.items()}, figs / "model_comparison.png",
                                 paper=paper_f1, profile=profile)
        pair = tuple(k for k in ("sctab", "linear") if k in per_organ) or tuple(per_organ)[:2]
        figures.organ_f1(per_organ, figs / "organ_f1.png", models=pair, profile=profile)
        figures.validation_curves(histories, figs / "validation_curves.png", profile=profile)
        figures.f1_vs_training_cells(dict(zip(classes, per_class[ref])), dict(zip(classes, train_counts.tolist())),
                                     figs / "f1_vs_training_cells.png", model=ref, profile=profile)
        sections = _sections(metrics, per_organ, PAPER, side_by_side, profile)
        if ens is not None:
            xy, idx, z = _embedding(store, embedding_cells, section(params, "seed"))
            figures.uncertainty_embedding(xy, ens["uncertainty"][idx], ens["correct"][idx],
                                          figs / "uncertainty_embedding.png", profile=profile)
            types = np.asarray(classes, dtype=object)[store.read_obs("test", columns=("cell_type",))[
                "cell_type"].to_numpy()[idx]]
            purity, chance = knn_purity(z, types)
            figures.cell_type_embedding(xy, types, figs / "cell_type_embedding.png", purity=purity, chance=chance,
                                        profile=profile)
            figures.reliability_diagram(ens["calibration"]["bins"], ens["calibration"]["ece"],
                                        figs / "reliability.png", profile=profile)
            pd.DataFrame([b for b in ens["calibration"]["bins"]]).to_csv(plots / "reliability.csv", index=False)
            em = metrics[ens["name"]]
            sections.append({"title": "Deep-ensemble uncertainty (Supp. Fig. 5)",
                             "text": f"Uncertainty = 1 - the largest mean probability of the {em['members']} members. "
                                     f"It separates wrong from right test predictions with AUROC "
                                     f"{em['uncertainty_auroc']:.3f}; expected calibration error {em['ece']:.3f}. "
                                     f"The embedding is a t-SNE of {len(idx):,} test cells (first 50 principal "
                                     f"components of their normalised expression). The same cells coloured by "
                                     f"their annotated type: a cell's 15 nearest neighbours (in those 50 "
                                     f"components) share its type {purity:.0%} of the time, against {chance:.0%} "
                                     f"for random neighbours, so types do separate although many share "
                                     f"ancestor programs and the cloud looks like one.",
                             "figures": ["figures/uncertainty_embedding.png", "figures/cell_type_embedding.png",
                                         "figures/reliability.png"]})
        sections[0]["figures"] = ["figures/model_comparison.png"]
        sections[1]["figures"] = ["figures/organ_f1.png"]
        sections.append({"title": "Training dynamics (Fig. 1e)", "text": "Validation loss and macro F1 per epoch.",
                         "figures": ["figures/validation_curves.png"]})
        worst = pcf.sort_values(f"f1_{ref}").head(5)[["cell_type", "train_cells", f"f1_{ref}"]]
        sections.append({"title": "Per cell type (Fig. 1g)",
                         "text": f"{ref} F1 per cell type against its number of training cells; the five lowest:",
                         "table": worst, "figures": ["figures/f1_vs_training_cells.png"]})
        write_report(tmp, profile=profile, sections=sections,
                     embedded=section(params, "census.source") == "embedded")
    flat = {k: {m: (round(float(v), 6) if isinstance(v, float) else v) for m, v in d.items()}
            for k, d in metrics.items()}
    summary = {"profile": profile, "models": flat,
               "per_organ_f1": {k: {o: round(float(v), 6) for o, v in d.items()} for k, d in per_organ.items()}}
    write_json(out / "metrics.json", summary)
    if log_mlflow:
        _log(metrics, per_organ, runs, out, params)
    print(f"evaluated {len(folders)} models in {time.perf_counter() - t0:.0f} s; report {out / 'report/index.html'}")
    return summary


def _histories(folders) -> dict[str, pd.DataFrame]:
    out = {}
    for f in folders:
        for h in sorted(f.glob("history.csv")) + sorted(f.glob("seed_*/history.csv")):
            label = f.name if h.parent == f else f"{f.name} {h.parent.name.replace('_', ' ')}"
            df = pd.read_csv(h)
            if {"epoch", "val_loss", "val_f1_macro"} <= set(df.columns):
                out[label] = df[["epoch", "val_loss", "val_f1_macro"]]
    return out


def _embedding(store: Store, n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """2-D t-SNE of a subsample of the test cells (PCA to 50 first), which rows it shows, and the PCA."""
    from sklearn.manifold import TSNE  # slow to import: only when the stage draws the embedding

    total = store.split("test").n_rows
    idx = np.sort(np.random.default_rng(seed).choice(total, size=min(n, total), replace=False))
    keep = np.zeros(total, bool)
    keep[idx] = True
    xs, start = [], 0
    for g in store.iter_row_groups("test", columns=("X",)):
        k = len(g["X"])
        xs.append(g["X"][keep[start:start + k]])
        start += k
    x = np.concatenate(xs)
    z = PCA(n_components=min(50, x.shape[1], len(x) - 1), random_state=seed).fit_transform(x)
    xy = TSNE(n_components=2, init="pca", random_state=seed, perplexity=min(30.0, max(5.0, len(x) / 100))
              ).fit_transform(z)
    return xy, idx, z


def _sections(metrics, per_organ, PAPER, side_by_side, profile) -> list[dict]:
    ours = {k: v["test_f1_macro"] for k, v in metrics.items()}
    table = side_by_side(ours, PAPER["model_comparison"], label="test macro F1")
    table.insert(1, "single model over seeds", [
        format_mean_std(metrics[k]["seeds_test_f1_macro_mean"], metrics[k]["seeds_test_f1_macro_sd"])
        + f" (n={metrics[k]['seeds']})" if "seeds" in metrics[k] else "n/a" for k in table.index])
    organs = pd.DataFrame(per_organ).rename_axis("organ system").reset_index()
    return [
        {"title": "Model comparison (Fig. 1c, Supp. Table 1)",
         "text": f"Ontology-corrected macro F1 on the test split, profile {profile}, beside the paper's values on "
                 f"the full census. \"Single model over seeds\" is the mean ± sd of the same model trained with "
                 f"different seeds (for scTab: the ensemble's members); a difference between two models smaller "
                 f"than these spreads is not a finding.", "table": table},
        {"title": "Per organ system (Fig. 1d)",
         "text": "Macro F1 over the cell types annotated in each organ system's test cells, as in the paper's code "
                 "(tissue_general grouped as in "
                 "conf/organ_systems.yaml).", "table": organs},
    ]


def _log(metrics, per_organ, runs, out: Path, params: dict) -> None:
    """Each model's test metrics on its own run; the report on a run of experiment `evaluate`."""
    from mlflow.exceptions import MlflowException  # heavy: loaded when the stage logs

    for name, m in metrics.items():
        rid = runs.get(name)
        if not rid:
            continue
        vals = {f"eval_{k}": v for k, v in m.items()}
        vals.update({f"eval_f1_{o}": v for o, v in per_organ.get(name, {}).items() if np.isfinite(v)})
        try:
            TrackedRun.attach(rid).log_metrics(vals)
        except MlflowException as e:  # a model trained against another tracking store
            print(f"evaluate: cannot log to run {rid} of {name} ({str(e).splitlines()[0]})")
    with tracked_run("evaluate", name="evaluate", params=params, tags={"role": "evaluate"}) as run:
        run.log_metrics({f"{n}_test_f1_macro": m["test_f1_macro"] for n, m in metrics.items()})
        run.log_folder(out / "report", "report")
        run.log_dict(json.loads((out / "metrics.json").read_text()), "metrics.json")
