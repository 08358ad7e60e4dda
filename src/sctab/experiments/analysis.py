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
