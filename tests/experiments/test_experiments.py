"""The paper's experiments on a small store: points through Ray Tune, MLflow runs, reuse, summaries."""

from __future__ import annotations

import copy
import json

import numpy as np
import pandas as pd
import pytest

from sctab.config import ConfigError
from sctab.data.store import Store
from sctab.experiments.points import experiment_points


def test_points_of_each_experiment(census_params):
    p = census_params
    ms = experiment_points("model-size", p)
    assert [pt.overrides["arch"]["n_d"] for pt in ms] == [8, 16]
    assert all(pt.overrides["augment"] is False and pt.overrides["epochs"] == 2 for pt in ms)
    ds = experiment_points("data-size", p)
    assert sorted(pt.overrides["subset"] for pt in ds) == ["cells_100", "cells_50", "donors_100", "donors_50"]
    aug = experiment_points("augmentation", p)
    assert sorted((pt.labels["condition"], pt.labels["seed"]) for pt in aug) == [
        ("with augmentation", 0), ("with augmentation", 1), ("without augmentation", 0), ("without augmentation", 1)]
    org = experiment_points("organ", p)
    assert {pt.overrides["subset"] for pt in org} == {"tissue_general=lung", None}
    assert all(pt.eval_tissue == "lung" for pt in org)
    # the digest follows the settings
    changed = copy.deepcopy(p)
    changed["models"]["sctab"]["lr"] = 0.5
    assert ms[0].digest(p) != ms[0].digest(changed) and ms[0].digest(p) == ms[0].digest(copy.deepcopy(p))
    with pytest.raises(ConfigError, match="unknown experiment"):
        experiment_points("depth", p)
    broken = copy.deepcopy(p)
    broken["experiments"]["data_size"]["schemes"] = ["tissues"]
    with pytest.raises(ConfigError, match="tissues"):
        experiment_points("data-size", broken)


def test_lung_rows_are_lung_cells(store_dir):
    from sctab.data.subsets import label_rows, train_rows

    store = Store(store_dir)
    rows = train_rows(store, "tissue_general=lung")
    codes = store.read_obs("train", columns=("tissue_general",))["tissue_general"].to_numpy()
    labels = store.lookup("tissue_general")["label"].tolist()
    assert 0 < len(rows) < len(codes) and np.all(np.diff(rows) > 0)
    assert {labels[c] for c in codes[rows]} == {"lung"}
    assert train_rows(store, None) is None
    np.testing.assert_array_equal(train_rows(store, "donors_50"), store.train_subset("donors_50"))
    with pytest.raises(ValueError, match="no label 'moon'"):
        label_rows(store, "train", "tissue_general", "moon")


def test_organ_points_score_the_tissue_over_its_truth(store_dir, census_params):
    """The organ experiment's tissue macro F1 is the published subset rule: over the lung cells' true types."""
    from dataclasses import replace
    from types import SimpleNamespace

    import torch
    from sklearn.metrics import f1_score

    from sctab.data.subsets import label_rows
    from sctab.evaluate.metrics import correct_predictions
    from sctab.evaluate.predict import predict_split
    from sctab.experiments.sweep import tissue_metrics
    from sctab.models import FeatureSpace, TorchClassifier, build_model

    org = experiment_points("organ", census_params)
    assert {pt.eval_average_over for pt in org} == {"truth"}
    assert org[0].digest(census_params) != replace(org[0], eval_average_over="union").digest(census_params)
    store = Store(store_dir)
    torch.manual_seed(0)
    module = build_model("linear", store.n_genes, store.n_classes)  # untrained: predicts types beyond lung's
    model = TorchClassifier(kind="linear", module=module, space=FeatureSpace.of(store))
    y, p = predict_split(model, store, "test")
    rows = label_rows(store, "test", "tissue_general", "lung")
    yt, pred = y[rows], correct_predictions(y[rows], p[rows].argmax(1), store.child_matrix())
    truth = f1_score(yt, pred, labels=np.unique(yt), average="macro", zero_division=0)
    union = f1_score(yt, pred, average="macro", zero_division=0)
    assert truth != pytest.approx(union)  # the case where the rules part ways
    m = tissue_metrics(model, store, SimpleNamespace(eval_batch_size=256), "lung")
    assert m["tissue_test_f1_macro"] == pytest.approx(truth)
    assert m["tissue_test_accuracy"] == pytest.approx((pred == yt).mean()) and m["tissue_test_rows"] == len(rows)
    m = tissue_metrics(model, store, SimpleNamespace(eval_batch_size=256), "lung", average_over="union")
    assert m["tissue_test_f1_macro"] == pytest.approx(union)


@pytest.mark.slow
def test_data_size_runs_points_once_and_summarises(workdir, census_params, store_dir, augment_dir):
    from mlflow.tracking import MlflowClient

    from sctab.experiments.summary import summarise_experiment
    from sctab.experiments.sweep import run_experiment

    tmp, uri = workdir
    table = run_experiment("data-size", census_params, store=store_dir, augmentations=augment_dir,
                           storage=tmp / "rr", verbose=0)
    assert len(table) == 4 and (table["status"] == "finished").all()
    assert table["test_f1_macro"].between(0, 1).all() and table["test_loss"].gt(0).all()
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("sweep-data-size")
    runs = client.search_runs([exp.experiment_id], filter_string="tags.role = 'point'")
    assert len(runs) == 4 and all(r.info.status == "FINISHED" for r in runs)
    assert {r.data.tags["label.scheme"] for r in runs} == {"cells", "donors"}
    # a second call reuses the finished points: no new run
    again = run_experiment("data-size", census_params, store=store_dir, augmentations=augment_dir,
                           storage=tmp / "rr", verbose=0)
    assert len(client.search_runs([exp.experiment_id], filter_string="tags.role = 'point'")) == 4
    pd.testing.assert_series_equal(again.sort_values("point")["test_f1_macro"].reset_index(drop=True),
                                   table.sort_values("point")["test_f1_macro"].reset_index(drop=True))
    out = summarise_experiment("data-size", table, census_params, tmp / "reports" / "data-size", store=store_dir)
    assert {"points.csv", "summary.csv", "summary.json", "summary.md", "data_size.png"} <= {p.name for p in
                                                                                             out.iterdir()}
    assert "0.0447" in (out / "summary.md").read_text()  # the paper's number beside ours
    # Fig. 2c: every point scored each organ system's test cells; the per-organ curve, table and findings
    organ_cols = [c for c in table.columns if c.startswith("organ_f1.")]
    assert organ_cols and table[organ_cols].stack().between(0, 1).all()
    assert (out / "organ_scaling.png").stat().st_size > 1000
    long = pd.read_csv(out / "organ_scaling.csv")
    assert set(long["organ"]) == {c[len("organ_f1."):] for c in organ_cols} and long["n_types"].ge(1).all()
    s = json.loads((out / "summary.json").read_text())
    assert s["organ_scaling"]["organs"] == len(organ_cols) and s["organ_scaling"]["full_fraction"] == 100
    assert [d["a"] for d in s["paired"]] == ["cells"] and s["paired"][0]["pairs"] == 1   # linear only here
    summary_runs = client.search_runs([exp.experiment_id], filter_string="tags.role = 'summary'")
    assert len(summary_runs) == 1


@pytest.mark.slow
def test_augmentation_and_organ(workdir, census_params, store_dir, augment_dir):
    from sctab.experiments.summary import summarise_experiment
    from sctab.experiments.sweep import run_experiment

    tmp, uri = workdir
    table = run_experiment("augmentation", census_params, store=store_dir, augmentations=augment_dir,
                           storage=tmp / "rr", verbose=0)
    assert len(table) == 4 and (table["status"] == "finished").all()
    out = summarise_experiment("augmentation", table, census_params, tmp / "aug", store=store_dir,
                               augmentations=augment_dir)
    s = json.loads((out / "summary.json").read_text())
    assert set(s["paired_tests"]) == {"test_f1_macro", "test_loss"}
    assert s["paired_tests"]["test_loss"]["pairs"] == 2
    ev = s["explained_variance"]
    assert 0 < ev["r2_augmented"] < 1 and 0 < ev["r2_original"] < 1 and ev["cells"] == 500

    organ = run_experiment("organ", census_params, store=store_dir, augmentations=augment_dir,
                           storage=tmp / "rr", verbose=0)
    assert set(organ["training"]) == {"lung only", "cross-organ"}
    assert organ["tissue_test_f1_macro"].between(0, 1).all()
    assert (organ["tissue_test_rows"] < organ["test_rows"] if "test_rows" in organ else
            organ["tissue_test_rows"] > 0).all()
    assert (organ["tissue_f1_average_over"] == "truth").all()
    out = summarise_experiment("organ", organ, census_params, tmp / "organ", store=store_dir)
    md = (out / "summary.md").read_text()
    assert "0.5291" in md and "average_over=truth" in md and "tissue test accuracy" in md
    s = json.loads((out / "summary.json").read_text())
    assert s["tissue_f1_average_over"] == "truth"
    assert {d["model"] for d in s["paired"]} == set(organ["model"]) | ({"linear vs sctab"} if {"sctab", "linear"}
                                                                         <= set(organ["model"]) else set())


@pytest.mark.slow
def test_model_size_counts_parameters(workdir, census_params, store_dir, augment_dir):
    from sctab.experiments.summary import summarise_experiment
    from sctab.experiments.sweep import run_experiment

    tmp, uri = workdir
    table = run_experiment("model-size", census_params, store=store_dir, augmentations=augment_dir,
                           storage=tmp / "rr", verbose=0)
    small, big = table.sort_values("n_d")["n_params"].tolist()
    assert 0 < small < big
    out = summarise_experiment("model-size", table, census_params, tmp / "ms", store=store_dir)
    summary = pd.read_csv(out / "summary.csv")
    assert list(summary["n_d"]) == [8, 16] and (out / "model_size.png").stat().st_size > 1000
    assert "16.2 M parameters" in (out / "summary.md").read_text()


@pytest.mark.slow
def test_interrupted_sweep_resumes_points_from_their_checkpoints(workdir, census_params, store_dir, augment_dir):
    """Ctrl+C while the second point trains, then the same command: finished points stay, the other resumes."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import yaml
    from mlflow.tracking import MlflowClient

    from sctab.config import REPO_ROOT

    tmp, uri = workdir
    params = copy.deepcopy(census_params)
    params["experiments"].update({"epochs": 6, "max_concurrent": 1,
                                  "model_size": {"model": "sctab", "widths": [[8, 4], [16, 8], [12, 6]]}})
    (tmp / "params.yaml").write_text(yaml.safe_dump(params))
    cmd = [sys.executable, str(REPO_ROOT / "pipelines" / "experiment.py"), "model-size", "--params", "params.yaml",
           "--store", str(store_dir), "--augmentations", str(augment_dir), "--out", "reports"]
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PYTHONUNBUFFERED": "1"}
    client = MlflowClient(uri)

    def runs(status=None):
        exp = client.get_experiment_by_name("sweep-model-size")
        if exp is None:
            return []
        rs = client.search_runs([exp.experiment_id], filter_string="tags.role = 'point'")
        return [r for r in rs if status is None or r.info.status == status]

    def second_point_epochs():
        running = runs("RUNNING")
        return max((len(client.get_metric_history(r.info.run_id, "val_f1_macro")) for r in running), default=0)

    proc = subprocess.Popen(cmd, cwd=tmp, env=env, stdout=open(tmp / "first.log", "w"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not (runs("FINISHED") and second_point_epochs() >= 2):
        time.sleep(0.5)
    assert proc.poll() is None, (tmp / "first.log").read_text()[-3000:]
    os.kill(proc.pid, signal.SIGINT)
    assert proc.wait(timeout=120) != 0
    finished_before = {r.data.tags["point_key"] for r in runs("FINISHED")}
    assert 1 <= len(finished_before) < 3

    second = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "resuming the interrupted sweep" in second.stdout
    finished = runs("FINISHED")
    keys = [r.data.tags["point_key"] for r in finished]
    assert sorted(keys) == sorted(set(keys)) and len(keys) == 3, "every point finished exactly once"
    assert finished_before <= set(keys)
    resumed = [r for r in finished if r.data.tags["point_key"] not in finished_before]
    first_steps = [client.get_metric_history(r.info.run_id, "val_f1_macro")[0].step for r in resumed]
    assert max(first_steps) >= 1, "the interrupted point continued from its checkpoint, not from epoch 0"
    assert (tmp / "reports" / "model-size" / "summary.md").exists()


def test_paired_differences_and_organ_scaling_findings():
    """The spread-aware comparisons of the experiment reports, on a table whose answer is known."""
    from sctab.experiments import analysis

    rows = []
    for seed, (a, b) in enumerate([(0.80, 0.70), (0.82, 0.71), (0.81, 0.69)]):
        rows += [{"model": "sctab", "seed": seed, "test_f1_macro": a, "status": "finished"},
                 {"model": "linear", "seed": seed, "test_f1_macro": b, "status": "finished"}]
    rows.append({"model": "linear", "seed": 9, "test_f1_macro": 0.0, "status": "failed"})
    d = analysis.paired_difference(pd.DataFrame(rows), "model", "sctab", "linear")
    assert d["pairs"] == 3 and d["mean_difference"] == pytest.approx(0.11)
    assert d["std_difference"] == pytest.approx(np.std([0.10, 0.11, 0.12], ddof=1)) and d["p_value"] < 0.01
    assert "beyond the seed spread" in analysis.describe_difference(d)
    noisy = analysis.paired_difference(pd.DataFrame(rows[:4]), "model", "sctab", "linear")
    assert noisy["pairs"] == 2
    none = analysis.paired_difference(pd.DataFrame(rows), "model", "sctab", "mlp")
    assert none["pairs"] == 0 and "no paired runs" in analysis.describe_difference(none)

    pts = []
    gains = {"lung": 0.10, "gut": 0.02, "heart": 0.05}
    types = {"lung": 9, "gut": 4, "heart": 6}
    for seed in range(3):
        for frac in (15, 100):
            row = {"model": "sctab", "scheme": "donors", "fraction": frac, "seed": seed, "status": "finished",
                   "train_cells": frac * 10}
            for organ, g in gains.items():
                row[f"organ_f1.{organ}"] = 0.6 + (g if frac == 100 else 0.0) + 0.001 * seed
                row[f"organ_types.{organ}"] = types[organ]
            pts.append(row)
    long = analysis.organ_scaling(pd.DataFrame(pts))
    assert len(long) == 18 and set(long["organ"]) == set(gains)
    f = analysis.organ_scaling_findings(long)
    assert f["gain_min"]["organ"] == "gut" and f["gain_min"]["mean"] == pytest.approx(0.02)
    assert f["gain_median"]["organ"] == "heart" and f["organs_gaining"] == 3
    assert f["corr_f1_vs_n_types"] > 0.9   # here F1 grows with the number of types (the paper saw -0.55)
