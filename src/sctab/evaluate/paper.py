"""The numbers the scTab paper reports, as data, so figures and reports can put ours beside them.

Every number here is for the paper's full census (22.2 M cells, 5,052 donors, 164 cell types; 15.2 M
training cells), not for whichever profile this project was run on.

Layout: ``PAPER[group][key]``. A measured quantity is ``{"mean": x, "std": y}`` (``std`` is ``None`` where
the paper gives none) with ``"n_runs"`` where the paper states how many runs the std comes from; a
p-value or a single statistic the paper gives without a spread is a plain float. F1 is always the
ontology-corrected macro F1 on the donor-wise holdout test set unless the key says otherwise.
"""

from __future__ import annotations

SOURCE = ("Fischer, F., Fischer, D. S., Biederstedt, E., Villani, A.-C. & Theis, F. J. "
          "Scaling cross-tissue single-cell annotation models (scTab). Preprint, 2023; "
          "Results, Fig. 1-3 and Supp. Tables 1-4, 7.")

DATASET = {
    "n_cells": 22_200_000,        # after filtering (Fig. 1a)
    "n_train_cells": 15_200_000,  # Fig. 2c, Supp. Fig. 1
    "n_val_cells": 3_500_000,     # Supp. Fig. 1
    "n_donors": 5_052,
    "n_cell_types": 164,
    "n_datasets": 249,
    "n_tissues": 56,
}


def _ms(mean: float, std: float | None = None, n_runs: int | None = None, **extra) -> dict:
    d = {"mean": mean, "std": std}
    if n_runs is not None:
        d["n_runs"] = n_runs
    d.update(extra)
    return d


PAPER: dict[str, dict] = {
    # Supp. Table 1 / Fig. 1c: test macro F1 per model (scTab and MLP fitted with data augmentation).
    "model_comparison": {
        "sctab": _ms(0.8295, 0.0007, 5),
        "xgboost": _ms(0.8127, 0.0005, 5),
        "mlp": _ms(0.7971, 0.0012, 5),
        "linear": _ms(0.7848, 0.0001, 4),
        "celltypist": _ms(0.7304, 0.0015, 4),  # trained on 1.5 M subsampled cells
    },
    # Supp. Table 2 / Fig. 2e: macro F1 on the lung part of the test set.
    "lung_holdout": {
        "sctab_cross_organ": _ms(0.7062, 0.0122, 5),
        "sctab_lung_only": _ms(0.7220, 0.0078, 5),
        "linear_cross_organ": _ms(0.5291, 0.0041, 4),
        "linear_lung_only": _ms(0.7146, 0.0040, 5),
    },
    # Supp. Table 3 / Fig. 3d: scTab with vs without augmentation on the test set (training data 4.3 M cells).
    "augmentation": {
        "test_loss_with_augmentation": _ms(0.659, 0.04, 4),
        "test_loss_without_augmentation": _ms(0.797, 0.05, 4),
        "test_f1_macro_with_augmentation": _ms(0.7841, 0.0030, 4),
        "test_f1_macro_without_augmentation": _ms(0.7755, 0.0020, 4),
        "p_value_test_loss": 0.0039,
        "p_value_test_f1_macro": 0.0016,
    },
    # Supp. Table 4: default vs tuned hyperparameters.
    "default_vs_tuned": {
        "xgboost_default": _ms(0.5855, 0.0112, 4),
        "xgboost_tuned": _ms(0.8127, 0.0005, 4),
        "celltypist_default": _ms(0.6258, 0.0036, 4),
        "celltypist_tuned": _ms(0.7304, 0.0015, 4),
    },
    # Supp. Table 7 / Fig. 3c: share of total variation explained by cell type and donor (R^2).
    "variance_decomposition": {
        "r2_original": 0.189,
        "r2_augmented": 0.164,
    },
    # Fig. 2f: scTab model size sweep on the full data (endpoints only are given in the text).
    "model_size": {
        "smallest": _ms(0.7864, 0.0010, n_params=1_700_000),
        "largest": _ms(0.8323, 0.0010, n_params=16_200_000),
    },
    # Fig. 2b-d: data scaling statements from the Results text.
    "data_scaling": {
        # scTab minus linear macro F1 on the full training data (Fig. 2d).
        "sctab_minus_linear_full_data": _ms(0.0447, 0.0008),
        # per organ system, F1 gain from 2.1 M to 15.2 M training cells (donor subsampling; Fig. 2c).
        "organ_gain_min": _ms(0.0454, 0.0083),
        "organ_gain_median": _ms(0.1219, 0.0212),
        # correlation of per-organ F1 with the number of cell types observed in that organ system.
        "organ_f1_vs_n_cell_types_corr": -0.55,
        "subset_cells_small": 2_100_000,
        "subset_cells_full": 15_200_000,
    },
}


def means(group: str) -> dict[str, float]:
    """``{key: mean}`` of one group, for the entries that have a mean (plain floats are kept as they are)."""
    return {k: (v["mean"] if isinstance(v, dict) else float(v)) for k, v in PAPER[group].items()
            if isinstance(v, dict | int | float)}


def stds(group: str) -> dict[str, float]:
    """``{key: std}`` of one group, for the entries whose std the paper gives."""
    return {k: v["std"] for k, v in PAPER[group].items() if isinstance(v, dict) and v.get("std") is not None}
