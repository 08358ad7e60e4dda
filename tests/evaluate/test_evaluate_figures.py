"""Figures, the paper's numbers and the report: every figure writes a sane PNG from small plain inputs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from matplotlib.image import imread

from sctab.evaluate import figures
from sctab.evaluate.paper import DATASET, PAPER, SOURCE, means, stds
from sctab.evaluate.results_report import format_mean_std, side_by_side, write_report
from sctab.experiments import figures as experiment_figures

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_png(path, out):
    assert path == out
    data = path.read_bytes()
    assert len(data) > 2000
    assert data[:8] == PNG_SIGNATURE
    img = imread(path)
    h, w = img.shape[:2]
    assert 250 <= h <= 3000 and 400 <= w <= 3000, (h, w)
    # not a blank canvas
    assert img[..., :3].std() > 0.01


def history(n_epochs, start_loss=2.0, seed=0):
    rng = np.random.default_rng(seed)
    e = np.arange(n_epochs)
    return pd.DataFrame({"epoch": e, "val_loss": start_loss / (1 + e) + rng.uniform(0, 0.05, n_epochs),
                         "val_f1_macro": 0.8 - 0.5 / (1 + e) + rng.uniform(0, 0.01, n_epochs)})


# ----------------------------------------------------------------------------------------- figures


def test_model_comparison(tmp_path):
    ours = {"linear": 0.61, "sctab": 0.70, "mlp": 0.66, "xgboost": float("nan")}
    out = tmp_path / "sub" / "fig1c.png"
    assert_png(figures.model_comparison(ours, out, paper=PAPER["model_comparison"], profile="tiny"), out)
    out2 = tmp_path / "fig1c_plain.png"
    assert_png(figures.model_comparison({"sctab": 0.7, "linear": 0.6}, out2, paper={"sctab": 0.8295}), out2)
    out3 = tmp_path / "fig1c_nopaper.png"
    assert_png(figures.model_comparison({"sctab": 0.7}, out3), out3)


def test_model_comparison_empty(tmp_path):
    out = tmp_path / "empty.png"
    assert figures.model_comparison({}, out, profile="tiny").stat().st_size > 0


def test_organ_f1_missing_model_and_nan(tmp_path):
    per_organ = {"sctab": {"lung": 0.8, "blood": 0.9, "brain": float("nan"), "gut": 0.7},
                 "linear": {"lung": 0.7, "blood": 0.85, "kidney": 0.5}}  # gut only in sctab, kidney only linear
    out = tmp_path / "fig1d.png"
    assert_png(figures.organ_f1(per_organ, out, profile="tiny"), out)
    out2 = tmp_path / "fig1d_one.png"  # the second model missing altogether
    assert_png(figures.organ_f1({"sctab": {"lung": 0.8}}, out2), out2)


def test_validation_curves_single_epoch_and_ensemble(tmp_path):
    hist = {"sctab seed 0": history(12), "sctab seed 1": history(10, seed=1), "linear": history(1, 3.0),
            "mlp": history(5).assign(val_f1_macro=np.nan)}
    out = tmp_path / "fig1e.png"
    assert_png(figures.validation_curves(hist, out, profile="tiny"), out)
    out2 = tmp_path / "fig1e_single.png"
    assert_png(figures.validation_curves({"linear": history(1)}, out2), out2)


def test_f1_vs_training_cells(tmp_path):
    rng = np.random.default_rng(0)
    types = [f"cell type {i}" for i in range(40)]
    counts = {t: int(10 ** rng.uniform(2, 6)) for t in types}
    f1 = {t: float(np.clip(0.2 + 0.12 * np.log10(counts[t]) + rng.normal(0, 0.05), 0, 1)) for t in types}
    f1["cell type 3"] = float("nan")
    f1["no count"] = 0.1
    counts["cell type 4"] = 0  # cannot go on a log axis
    out = tmp_path / "fig1g.png"
    assert_png(figures.f1_vs_training_cells(f1, counts, out, profile="tiny"), out)
    out2 = tmp_path / "fig1g_one.png"
    assert_png(figures.f1_vs_training_cells({"a": 0.5}, {"a": 100}, out2), out2)


def test_uncertainty_embedding_and_reliability(tmp_path):
    rng = np.random.default_rng(0)
    n = 600
    xy = rng.normal(size=(n, 2))
    u = rng.beta(1, 5, n)
    correct = rng.uniform(size=n) > u  # more uncertain -> more often wrong
    u[3] = np.nan
    out = tmp_path / "supp5.png"
    assert_png(figures.uncertainty_embedding(xy, u, correct, out, profile="tiny"), out)
    out_all = tmp_path / "supp5_allright.png"
    assert_png(figures.uncertainty_embedding(xy[:50], np.abs(u[:50] * 0) + 0.1, np.ones(50, bool), out_all),
               out_all)
    with pytest.raises(ValueError):
        figures.uncertainty_embedding(xy, u[:10], correct, tmp_path / "bad.png")
    types = np.array([f"type {i % 15}" for i in range(n)])
    out = tmp_path / "types.png"
    assert_png(figures.cell_type_embedding(xy, types, out, purity=0.7, chance=0.07, profile="tiny"), out)
    with pytest.raises(ValueError, match="one label per row"):
        figures.cell_type_embedding(xy, types[:5], tmp_path / "bad2.png")

    edges = np.linspace(0, 1, 11)
    bins = [{"lo": lo, "hi": hi, "confidence": (lo + hi) / 2, "accuracy": max(0.0, (lo + hi) / 2 - 0.05),
             "count": 100 * (i + 1)} for i, (lo, hi) in enumerate(zip(edges[:-1], edges[1:]))]
    bins[0].update(count=0, accuracy=None, confidence=None)  # as sctab.evaluate.uncertainty.calibration gives
    bins[1].update(accuracy=float("nan"))
    out2 = tmp_path / "reliability.png"
    assert_png(figures.reliability_diagram(bins, 0.043, out2, profile="tiny"), out2)
    out3 = tmp_path / "reliability_empty.png"
    assert figures.reliability_diagram([], float("nan"), out3).stat().st_size > 0


def test_scaling_curve_hue_seeds_and_paper(tmp_path):
    rows = []
    for model in ("sctab", "linear"):
        for frac in (0.1, 0.3, 1.0):
            for seed in (0, 1):
                rows.append({"model": model, "n_train_cells": int(frac * 1e5), "seed": seed,
                             "test_f1_macro": 0.5 + 0.2 * frac + 0.01 * seed, "test_loss": 1.5 - frac})
    pts = pd.DataFrame(rows)
    out = tmp_path / "fig2d.png"
    assert_png(experiment_figures.scaling_curve(pts, "n_train_cells", out, hue="model", title="Data scaling (Fig. 2d)",
                                     profile="tiny"), out)
    paper = pd.DataFrame({"n_params": [1.7e6, 16.2e6], "test_f1_macro": [0.7864, 0.8323],
                          "test_f1_macro_std": [0.001, 0.001]})
    size = pd.DataFrame({"n_params": [1e4, 5e4, 2e5], "test_f1_macro": [0.5, np.nan, 0.6]})  # no test_loss column
    out2 = tmp_path / "fig2f.png"
    assert_png(experiment_figures.scaling_curve(size, "n_params", out2, paper=paper, profile="tiny"), out2)
    # no hue / empty hue name / hue column absent / x <= 0 on a log axis
    for i, hue in enumerate((None, "", "nonexistent")):
        o = tmp_path / f"nohue{i}.png"
        assert_png(experiment_figures.scaling_curve(pts.assign(n_train_cells=pts.n_train_cells.where(pts.seed == 0, 0)),
                                         "n_train_cells", o, hue=hue), o)
    # a hue column whose values are all NaN
    o = tmp_path / "nanhue.png"
    assert_png(experiment_figures.scaling_curve(pts.assign(model=np.nan), "n_train_cells", o, hue="model",
                                                xlog=False), o)
    with pytest.raises(KeyError):
        experiment_figures.scaling_curve(pts, "missing", tmp_path / "x.png")


def test_paired_comparison(tmp_path):
    rows = []
    for seed in range(4):
        rows.append({"condition": "with augmentation", "seed": seed, "test_loss": 0.66 + 0.01 * seed,
                     "test_f1_macro": 0.784 + 0.001 * seed})
        rows.append({"condition": "without augmentation", "seed": seed, "test_loss": 0.80 + 0.02 * seed,
                     "test_f1_macro": 0.775 + 0.0005 * seed})
    rows.append({"condition": "with augmentation", "seed": 9, "test_loss": 0.7, "test_f1_macro": np.nan})
    out = tmp_path / "supp_t3.png"
    assert_png(experiment_figures.paired_comparison(pd.DataFrame(rows), out, profile="tiny"), out)
    out2 = tmp_path / "supp_t3_one.png"
    assert_png(experiment_figures.paired_comparison(pd.DataFrame(rows[:2]), out2), out2)


# ----------------------------------------------------------------------------------------- paper


def test_paper_supp_table_1_exact():
    t1 = PAPER["model_comparison"]
    expected = {"sctab": (0.8295, 0.0007), "xgboost": (0.8127, 0.0005), "mlp": (0.7971, 0.0012),
                "linear": (0.7848, 0.0001), "celltypist": (0.7304, 0.0015)}
    assert {k: (v["mean"], v["std"]) for k, v in t1.items()} == expected
    assert means("model_comparison")["sctab"] == 0.8295 and stds("model_comparison")["linear"] == 0.0001
    assert PAPER["lung_holdout"]["linear_cross_organ"]["mean"] == 0.5291
    assert PAPER["augmentation"]["p_value_test_f1_macro"] == 0.0016
    assert PAPER["default_vs_tuned"]["xgboost_default"] == {"mean": 0.5855, "std": 0.0112, "n_runs": 4}
    assert PAPER["variance_decomposition"] == {"r2_original": 0.189, "r2_augmented": 0.164}
    assert PAPER["model_size"]["largest"]["mean"] == 0.8323
    assert PAPER["data_scaling"]["sctab_minus_linear_full_data"]["mean"] == 0.0447
    assert DATASET["n_cells"] == 22_200_000 and "scTab" in SOURCE
    for group in PAPER.values():
        for key in group:
            assert key == key.lower() and " " not in key


# ----------------------------------------------------------------------------------------- report


def test_side_by_side():
    df = side_by_side({"sctab": 0.71234, "linear": {"mean": 0.65, "std": 0.002}, "other": 1.0},
                      PAPER["model_comparison"], label="model")
    assert list(df.columns) == ["ours", "paper", "difference"]
    assert list(df.index) == ["sctab", "linear"] and df.index.name == "model"
    assert df.loc["sctab", "paper"] == "0.8295 ± 0.0007"
    assert df.loc["sctab", "ours"] == "0.7123"
    assert df.loc["sctab", "difference"] == "-0.1172"
    assert df.loc["linear", "ours"] == "0.6500 ± 0.0020"
    assert side_by_side({"x": float("nan")}, {"x": {"mean": 0.5, "std": None}}).loc["x", "difference"] == "n/a"
    aug = side_by_side({"test_loss_with_augmentation": 0.7, "p_value_test_loss": 0.01}, PAPER["augmentation"])
    assert aug.loc["test_loss_with_augmentation", "paper"] == "0.659 ± 0.040"
    assert aug.loc["p_value_test_loss", "paper"] == "0.0039"
    assert format_mean_std(None) == "n/a"


def test_write_report(tmp_path):
    out_dir = tmp_path / "report"
    fig = figures.model_comparison({"sctab": 0.7, "linear": 0.6}, out_dir / "figures" / "fig1c.png",
                                   paper=PAPER["model_comparison"], profile="tiny")
    table = side_by_side({"sctab": 0.71234, "linear": 0.6}, PAPER["model_comparison"], label="model")
    numeric = pd.DataFrame({"model": ["sctab", "linear"], "cells": [123456, 7], "f1": [0.81234, np.nan]})
    sections = [
        {"title": "Model comparison (Fig. 1c)", "text": "First paragraph with `code` & <tags>.\n\n- one\n- two",
         "table": table, "figures": ["figures/fig1c.png"]},
        {"title": "Numbers", "text": "", "table": numeric, "figures": [str(fig), "figures/absent.png"]},
        {"title": "Empty", "text": "nothing", "table": None, "figures": []},
    ]
    path = write_report(out_dir, profile="tiny", sections=sections)
    assert path == out_dir / "index.html"
    md = (out_dir / "index.md").read_text()
    page = path.read_text()
    for doc in (md, page):
        assert "tiny" in doc and "22.2 M cells" in doc
        assert "0.8295 ± 0.0007" in doc and "0.7123" in doc and "-0.1172" in doc
        assert "123,456" in doc and "0.8123" in doc
        assert "figures/fig1c.png" in doc and "Model comparison (Fig. 1c)" in doc
        assert "missing" in doc  # figures/absent.png is flagged
        assert str(tmp_path) not in doc  # absolute figure paths under out_dir are made relative
    assert "&lt;tags&gt;" in page and "<code>code</code>" in page and "<li>one</li>" in page
    assert "<table>" in page and "<style>" in page and 'src="figures/fig1c.png"' in page
    assert "| model | ours | paper | difference |" in md


def test_report_says_when_the_data_is_the_embedded_census(tmp_path):
    """The evaluation report carries the test-bed box on an embedded profile, and only there."""
    sections = [{"title": "Model comparison", "text": "x", "table": None, "figures": []}]
    for embedded in (True, False):
        out_dir = tmp_path / str(embedded)
        page = write_report(out_dir, profile="tiny", sections=sections, embedded=embedded).read_text()
        md = (out_dir / "index.md").read_text()
        for doc in (md, page):
            assert ("a test bed we built, not biology" in doc) is embedded
            assert ("make census-realism" in doc) is embedded
