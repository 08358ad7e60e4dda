"""Summaries of the experiments: tables beside the paper's numbers, the paired test, the variance check."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from sctab.data.augment import Augmenter, load_augmentations
from sctab.models.celltypist_model import sample_indices

METRICS = ("test_f1_macro", "test_loss")


def _agg(table: pd.DataFrame, by: list[str], metrics=METRICS) -> pd.DataFrame:
    ok = table[table["status"] == "finished"]
    cols = [m for m in metrics if m in ok.columns]
    g = ok.groupby(by, sort=True)[cols]
    out = g.mean().add_suffix("_mean").join(g.std(ddof=1).add_suffix("_std")).join(g.size().rename("runs"))
    return out.reset_index()


def model_size_summary(table: pd.DataFrame) -> pd.DataFrame:
    ok = table[table["status"] == "finished"]
    return _agg(ok.assign(n_params=ok["n_params"].round().astype(np.int64)), ["n_d", "n_a", "n_params"])


def data_size_summary(table: pd.DataFrame) -> pd.DataFrame:
    return _agg(table, ["model", "scheme", "fraction"])


def organ_summary(table: pd.DataFrame) -> pd.DataFrame:
    return _agg(table, ["model", "training"],
                metrics=("tissue_test_f1_macro", "tissue_test_accuracy", "tissue_test_loss"))


def augmentation_summary(table: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """Mean/std per condition and the paired t-test across seeds (paper, Supp. Table 3)."""
    from scipy import stats

    summary = _agg(table, ["condition"])
    ok = table[table["status"] == "finished"]
    wide = ok.pivot_table(index="seed", columns="condition", values=list(METRICS))
    tests = {}
    for m in METRICS:
        try:
            a, b = wide[(m, "with augmentation")], wide[(m, "without augmentation")]
        except KeyError:
            continue
        pair = pd.concat([a, b], axis=1).dropna()
        if len(pair) >= 2:
            t = stats.ttest_rel(pair.iloc[:, 0], pair.iloc[:, 1])
            tests[m] = {"pairs": int(len(pair)), "mean_difference": float((pair.iloc[:, 0] - pair.iloc[:, 1]).mean()),
                        "t": float(t.statistic), "p_value": float(t.pvalue)}
        else:
            tests[m] = {"pairs": int(len(pair)), "p_value": float("nan")}
    return summary, tests


def explained_variance(store, augmentations_path, n_cells: int, seed: int = 0, clip=(0.0, 9.0)) -> dict:
    """R^2 of expression ~ 1 + onehot(cell type) + onehot(donor), before and after augmentation (Supp. Table 7).

    A random subsample of train; the augmented copy adds one random augmentation vector (random sign) to each
    cell and clamps, as in training. R^2 is variance-weighted over genes: the share of the total variation.
    """
    import torch
    from sklearn.linear_model import LinearRegression
    from sklearn.metrics import r2_score

    split = store.split("train")
    rows = sample_indices(split.n_rows, int(n_cells), seed)
    keep = np.zeros(split.n_rows, bool)
    keep[rows] = True
    xs, ct, donor, start = [], [], [], 0
    for g in store.iter_row_groups("train", columns=("X", "cell_type", "donor_id")):
        n = len(g["cell_type"])
        sel = keep[start:start + n]
        start += n
        if sel.any():
            xs.append(g["X"][sel])
            ct.append(g["cell_type"][sel])
            donor.append(g["donor_id"][sel])
    x = np.concatenate(xs)
    design = pd.get_dummies(pd.DataFrame({"cell_type": np.concatenate(ct).astype(str),
                                          "donor": np.concatenate(donor).astype(str)}), drop_first=True)
    d = design.to_numpy(dtype=np.float32)
    aug = Augmenter(load_augmentations(augmentations_path, store.n_genes), clip=clip)
    gen = torch.Generator().manual_seed(seed)
    x_aug = aug(torch.as_tensor(x), generator=gen).numpy()
    out = {"cells": int(len(x)), "design_columns": int(d.shape[1])}
    for name, data in (("original", x), ("augmented", x_aug)):
        fit = LinearRegression().fit(d, data)
        out[f"r2_{name}"] = float(r2_score(data, fit.predict(d), multioutput="variance_weighted"))
    return out


def fmt(mean: float, std: float | None) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "n/a"
    if std is None or (isinstance(std, float) and math.isnan(std)):
        return f"{mean:.4f}"
    return f"{mean:.4f} ± {std:.4f}"


def paired_difference(table: pd.DataFrame, column: str, a, b, metric: str = "test_f1_macro",
                      where: dict | None = None) -> dict:
    """``a`` minus ``b`` of ``column`` paired over seeds: mean ± sd of the differences and a paired t-test.

    The experiments run every point with the same seeds, so two settings are compared seed by seed (the
    paper reports such differences as mean ± sd, e.g. scTab minus linear at full data)."""
    from scipy import stats

    ok = table[table["status"] == "finished"]
    for k, v in (where or {}).items():
        ok = ok[ok[k] == v]
    out = {"a": str(a), "b": str(b), "metric": metric, "pairs": 0, "mean_difference": float("nan"),
           "std_difference": float("nan"), "t": float("nan"), "p_value": float("nan")}
    if metric not in ok.columns or "seed" not in ok.columns:
        return out
    wide = ok.pivot_table(index="seed", columns=column, values=metric)
    if a not in wide.columns or b not in wide.columns:
        return out
    pair = wide[[a, b]].dropna()
    diff = pair[a] - pair[b]
    out.update(pairs=int(len(pair)), mean_difference=float(diff.mean()) if len(pair) else float("nan"))
    if len(pair) >= 2:
        out["std_difference"] = float(diff.std(ddof=1))
        if float(diff.std(ddof=1)) > 0:
            t = stats.ttest_rel(pair[a], pair[b])
            out.update(t=float(t.statistic), p_value=float(t.pvalue))
    return out


def describe_difference(d: dict) -> str:
    """One line: the paired difference, its spread and whether it exceeds it."""
    if not d["pairs"]:
        return f"{d['a']} - {d['b']} ({d['metric']}): no paired runs"
    sd = d["std_difference"]
    verdict = ""
    if d["pairs"] >= 2 and not math.isnan(d["p_value"]):
        verdict = (" — beyond the seed spread (p < 0.05)" if d["p_value"] < 0.05
                   else " — within the seed spread (p >= 0.05): not a finding on this profile")
    return (f"{d['a']} - {d['b']} ({d['metric'].replace('_', ' ')}): {fmt(d['mean_difference'], sd)} over "
            f"{d['pairs']} paired seed(s), paired t-test p = {d['p_value']:.3g}{verdict}")


def organ_scaling(table: pd.DataFrame, store=None) -> pd.DataFrame:
    """Long table of the data-size points' per-organ test macro F1 (paper Fig. 2c): one row per point x organ."""
    ok = table[table["status"] == "finished"]
    cols = [c for c in ok.columns if c.startswith("organ_f1.")]
    if not cols:
        return pd.DataFrame(columns=["model", "scheme", "fraction", "seed", "organ", "f1_macro", "n_types"])
    keep = [c for c in ("model", "scheme", "fraction", "seed", "train_cells") if c in ok.columns]
    long = ok.melt(id_vars=keep, value_vars=cols, var_name="organ", value_name="f1_macro")
    long["organ"] = long["organ"].str[len("organ_f1."):]
    types = ok.melt(id_vars=keep, value_vars=[c.replace("organ_f1.", "organ_types.") for c in cols
                                              if c.replace("organ_f1.", "organ_types.") in ok.columns],
                    var_name="organ", value_name="n_types")
    if len(types):
        types["organ"] = types["organ"].str[len("organ_types."):]
        long = long.merge(types, on=keep + ["organ"], how="left")
    return long.dropna(subset=["f1_macro"]).reset_index(drop=True)


def organ_scaling_findings(long: pd.DataFrame, model: str = "sctab", scheme: str = "donors") -> dict:
    """The paper's Fig. 2c numbers on our points: per organ, full-data F1 minus smallest-subset F1 (paired over
    seeds), their minimum and median over organs, and the correlation of full-data organ F1 with the number of
    cell types per organ (paper: minimum 0.0454 ± 0.0083, median 0.1219 ± 0.0212, correlation -0.55)."""
    d = long[(long["model"] == model) & (long["scheme"] == scheme)]
    if d.empty:
        return {}
    lo, hi = d["fraction"].min(), d["fraction"].max()
    rows = []
    for organ, g in d.groupby("organ"):
        wide = g.pivot_table(index="seed", columns="fraction", values="f1_macro")
        if lo not in wide or hi not in wide:
            continue
        diff = (wide[hi] - wide[lo]).dropna()
        full = g[g["fraction"] == hi]
        rows.append({"organ": organ, "gain_mean": float(diff.mean()),
                     "gain_std": float(diff.std(ddof=1)) if len(diff) > 1 else float("nan"), "seeds": int(len(diff)),
                     "f1_full": float(full["f1_macro"].mean()),
                     "n_types": float(full["n_types"].mean()) if "n_types" in full else float("nan")})
    gains = pd.DataFrame(rows)
    if gains.empty:
        return {}
    order = gains["gain_mean"].sort_values()
    i_min = order.index[0]
    i_med = order.index[len(order) // 2]
    corr = float(gains[["f1_full", "n_types"]].corr().iloc[0, 1]) if len(gains) > 2 else float("nan")
    return {"model": model, "scheme": scheme, "smallest_fraction": int(lo), "full_fraction": int(hi),
            "per_organ": gains.to_dict(orient="records"),
            "gain_min": {"organ": gains.loc[i_min, "organ"], "mean": gains.loc[i_min, "gain_mean"],
                         "std": gains.loc[i_min, "gain_std"]},
            "gain_median": {"organ": gains.loc[i_med, "organ"], "mean": gains.loc[i_med, "gain_mean"],
                            "std": gains.loc[i_med, "gain_std"]},
            "organs_gaining": int((gains["gain_mean"] > 0).sum()), "organs": int(len(gains)),
            "corr_f1_vs_n_types": corr}
