"""The shared training loop without Ray (LocalSession): learning, resuming, settings and bad input."""

from __future__ import annotations

import copy
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sctab.config import ConfigError, load_profile
from sctab.data.store import Store, StoreError
from sctab.evaluate.metrics import macro_f1
from sctab.train.loop import LocalSession, TrainingError, run_training
from sctab.train.spec import spec_from_params


def _spec(census_params, store_dir, augment_dir, model="sctab", **over):
    return spec_from_params(census_params, model, store=str(store_dir), augmentations=str(augment_dir), **over)


def test_paper_defaults_in_the_full_scale_profile():
    params = load_profile("census-2023-05-15")
    sctab = spec_from_params(params, "sctab", augmentations="x")
    got = (sctab.lr, sctab.weight_decay, sctab.batch_size, sctab.lr_gamma, sctab.augment)
    assert got == (0.005, 0.05, 2048, 0.9, True)
    assert sctab.arch == {"n_d": 128, "n_a": 64, "n_shared": 3, "n_independent": 5, "n_steps": 1, "gamma": 1.3,
                          "virtual_batch_size": 256, "mask_type": "entmax", "lambda_sparse": 1e-5}
    mlp = spec_from_params(params, "mlp", augmentations="x")
    assert (mlp.lr, mlp.weight_decay, mlp.arch) == (0.002, 0.05, {"n_hidden": 8, "hidden_size": 128, "dropout": 0.1})
    lin = spec_from_params(params, "linear")
    assert (lin.lr, lin.weight_decay, lin.augment) == (0.0005, 0.01, False)
    assert params["ensemble"]["seeds"] == [0, 1, 2, 3, 4]


def test_settings_errors(census_params):
    p = copy.deepcopy(census_params)
    p["models"]["sctab"]["learning_rate"] = 0.1
    with pytest.raises(ConfigError, match="unknown key.*learning_rate"):
        spec_from_params(p, "sctab", augmentations="x")
    with pytest.raises(ConfigError, match="augment is on but no augmentation file"):
        spec_from_params(census_params, "mlp")
    with pytest.raises(ConfigError, match="no models.xgb section"):
        spec_from_params(census_params, "xgb")
    with pytest.raises(ConfigError, match="batch_size must be a positive integer"):
        spec_from_params(census_params, "linear", batch_size=0)


def test_sctab_learns_and_beats_majority_class(census_params, store_dir, augment_dir, tmp_path, torch_one_thread):
    spec = _spec(census_params, store_dir, augment_dir)
    session = LocalSession(tmp_path / "ckpt", device="cpu")
    out = run_training(spec, session)
    hist = out["history"]
    assert [h["epoch"] for h in hist] == list(range(spec.epochs))
    assert hist[-1]["train_loss"] < 0.8 * hist[0]["train_loss"]
    store = Store(store_dir)
    assert hist[0]["train_rows"] == store.split("train").n_rows  # every training row, every epoch
    y_val = store.read_obs("val")["cell_type"].to_numpy()
    y_train = store.read_obs("train")["cell_type"].to_numpy()
    majority = macro_f1(y_val, np.full_like(y_val, np.bincount(y_train).argmax()), store.child_matrix())
    best = max(h["val_f1_macro"] for h in hist)
    assert best > majority + 0.25, (best, majority)
    assert out["best_val_f1_macro"] == pytest.approx(best)


def test_resume_continues_from_the_last_checkpoint(census_params, store_dir, augment_dir, tmp_path, torch_one_thread):
    spec = _spec(census_params, store_dir, augment_dir, model="mlp", epochs=2)
    first = LocalSession(tmp_path / "ckpt", device="cpu")
    run_training(spec, first)
    again = LocalSession(tmp_path / "ckpt", device="cpu")
    out = run_training(spec.with_(epochs=4), again)
    assert [r["epoch"] for r in again.reports] == [2, 3]
    assert [h["epoch"] for h in out["history"]] == [0, 1, 2, 3]
    # the resumed run continues the learning-rate schedule instead of restarting it
    assert out["history"][2]["lr"] == pytest.approx(spec.lr * spec.lr_gamma ** 2)


def test_checkpoint_of_another_store_is_refused(census_params, store_dir, augment_dir, tmp_path, torch_one_thread):
    import torch

    spec = _spec(census_params, store_dir, augment_dir, model="linear", epochs=1)
    run_training(spec, LocalSession(tmp_path / "ckpt", device="cpu"))
    state = torch.load(tmp_path / "ckpt" / "state.pt", weights_only=True)
    state["model"] = {k: v[:, :10] if v.ndim == 2 else v for k, v in state["model"].items()}
    torch.save(state, tmp_path / "ckpt" / "state.pt")
    with pytest.raises(TrainingError, match="does not fit"):
        run_training(spec.with_(epochs=2), LocalSession(tmp_path / "ckpt", device="cpu"))


def test_augmentations_of_the_wrong_width_name_the_file(census_params, store_dir, tmp_path):
    from sctab.data.augment import AugmentError

    bad = tmp_path / "augmentations.npy"
    np.save(bad, np.zeros((5, 7), np.float32))
    spec = _spec(census_params, store_dir, bad, model="mlp", epochs=1)
    with pytest.raises(AugmentError, match="augmentations.npy"):
        run_training(spec, LocalSession(tmp_path / "ckpt", device="cpu"))


def _copy_store(store_dir, tmp_path):
    dst = tmp_path / "store"
    shutil.copytree(store_dir, dst)
    return dst


def test_label_outside_the_lookup_names_the_file(census_params, store_dir, augment_dir, tmp_path):
    dst = _copy_store(store_dir, tmp_path)
    part = dst / "train" / "part.0.parquet"
    tbl = pq.read_table(part)
    codes = tbl.column("cell_type").to_numpy().copy()
    codes[3] = 999
    tbl = tbl.set_column(tbl.schema.get_field_index("cell_type"), "cell_type", pa.array(codes))
    pq.write_table(tbl, part, row_group_size=64)
    spec = _spec(census_params, dst, augment_dir, model="linear", epochs=1)
    with pytest.raises(ValueError, match=r"part\.0\.parquet.*999|999.*part\.0\.parquet"):
        run_training(spec, LocalSession(tmp_path / "ckpt", device="cpu"))


def test_corrupt_part_names_the_file(census_params, store_dir, augment_dir, tmp_path):
    dst = _copy_store(store_dir, tmp_path)
    part = dst / "train" / "part.0.parquet"
    part.write_bytes(part.read_bytes()[: part.stat().st_size // 2])
    spec = _spec(census_params, dst, augment_dir, model="linear", epochs=1)
    with pytest.raises(StoreError, match="part.0.parquet"):
        run_training(spec, LocalSession(tmp_path / "ckpt", device="cpu"))


def test_a_step_budget_sets_the_epochs_from_the_train_rows(census_params, store_dir, augment_dir, tmp_path,
                                                           torch_one_thread):
    """models.<m>.max_steps: as many epochs as the run's train rows need for that many optimiser steps."""
    store = Store(store_dir)
    n = store.split("train").n_rows
    spec = _spec(census_params, store_dir, augment_dir, model="linear", max_steps=3 * -(-n // 64) - 1,
                 batch_size=64, patience=None)
    assert spec.epochs_for(n) == 3 and spec.epochs_for(n, world_size=2) == 6 and spec.epochs_for(10) == spec.max_steps
    out = run_training(spec, LocalSession(tmp_path / "ckpt", device="cpu"))
    assert [h["epoch"] for h in out["history"]] == [0, 1, 2]
    # a profile gives one of the two; an experiment's epochs override replaces the budget
    p = copy.deepcopy(census_params)
    p["models"]["linear"]["max_steps"] = 500
    with pytest.raises(ConfigError, match="either epochs or max_steps"):
        spec_from_params(p, "linear")
    del p["models"]["linear"]["epochs"]
    assert spec_from_params(p, "linear").max_steps == 500
    assert spec_from_params(p, "linear", epochs=4).max_steps is None
    with pytest.raises(ConfigError, match="max_steps must be a positive integer"):
        spec_from_params(p, "linear", max_steps=0)


def test_max_epochs_caps_a_step_budget_and_min_steps_in_proportion(census_params, store_dir, augment_dir, tmp_path,
                                                                    torch_one_thread):
    """models.<m>.max_epochs: on few train cells a step budget is at most that many epochs, and min_steps keeps
    its share of the run (the reference profiles: 3,000 / 1,500 steps become 1,600 / 800 on 222 cells)."""
    n = Store(store_dir).split("train").n_rows
    spe = -(-n // 64)
    frozen = dict(model="linear", batch_size=64, patience=1, lr=1e-12, max_steps=10 * spe,
                  min_steps=8 * spe)
    capped = _spec(census_params, store_dir, augment_dir, max_epochs=5, **frozen)
    assert (capped.epochs_for(n), capped.min_steps_for(n)) == (5, 4 * spe)
    spe2 = -(-n // 128)  # two workers: half the steps an epoch, the same 4/5 share held
    assert (capped.epochs_for(n, world_size=2), capped.min_steps_for(n, world_size=2)) == (5, 4 * spe2)
    assert capped.with_(max_epochs=50).min_steps_for(n) == 8 * spe  # a cap above the budget changes nothing
    # a model that cannot improve stops once patience and the (cut) min_steps allow: epoch 3, not epoch 7
    held = run_training(_spec(census_params, store_dir, augment_dir, **frozen),
                        LocalSession(tmp_path / "a", device="cpu"))["history"]
    cut = run_training(capped, LocalSession(tmp_path / "b", device="cpu"))["history"]
    assert (len(held), len(cut)) == (8, 4)
    with pytest.raises(ConfigError, match="max_epochs must be a positive integer"):
        capped.with_(max_epochs=0)
    with pytest.raises(ConfigError, match="max_epochs caps a step budget"):
        _spec(census_params, store_dir, augment_dir, model="linear", max_epochs=5)
    p = copy.deepcopy(census_params)
    del p["models"]["linear"]["epochs"]
    p["models"]["linear"]["max_epochs"] = 5
    with pytest.raises(ConfigError, match="max_epochs caps a step budget"):
        spec_from_params(p, "linear")
    p["models"]["linear"]["max_steps"] = 100
    assert spec_from_params(p, "linear").max_epochs == 5
    assert spec_from_params(p, "linear", epochs=4).max_epochs is None  # an experiment's epochs drop the budget


def test_small_reference_settings_warm_up_smooth_and_hold_early_stopping(census_params, store_dir, augment_dir,
                                                                          tmp_path, torch_one_thread):
    """warmup_steps scales the lr per step without moving StepLR; val_smoothing is an EMA of the validation F1
    that selection and patience act on; min_steps keeps early stopping from acting before that many steps."""
    n = Store(store_dir).split("train").n_rows
    spe = -(-n // 64)  # steps per epoch
    spec = _spec(census_params, store_dir, augment_dir, model="linear", epochs=3, batch_size=64, patience=None,
                 warmup_steps=2 * spe, val_smoothing=0.5, lr=0.01, lr_gamma=0.5)
    hist = run_training(spec, LocalSession(tmp_path / "a", device="cpu"))["history"]
    # the lr of each epoch's last step: half-way up the ramp, then StepLR's own decay (0.01, 0.005, 0.0025)
    assert [round(h["lr"], 9) for h in hist] == [0.005, 0.005, 0.0025]
    assert [h["step"] for h in hist] == [spe, 2 * spe, 3 * spe]
    assert hist[0]["val_f1_smoothed"] == hist[0]["val_f1_macro"]
    for prev, h in zip(hist, hist[1:]):
        assert h["val_f1_smoothed"] == pytest.approx(0.5 * prev["val_f1_smoothed"] + 0.5 * h["val_f1_macro"])
    assert hist[-1]["best_val_f1_macro"] == max(h["val_f1_smoothed"] for h in hist)
    # a model that cannot improve (lr ~ 0) stops after `patience` epochs, unless min_steps holds it
    frozen = dict(model="linear", epochs=4, batch_size=64, patience=1, lr=1e-12)
    stopped = run_training(_spec(census_params, store_dir, augment_dir, **frozen),
                           LocalSession(tmp_path / "b", device="cpu"))["history"]
    held = run_training(_spec(census_params, store_dir, augment_dir, min_steps=4 * spe, **frozen),
                        LocalSession(tmp_path / "c", device="cpu"))["history"]
    assert len(stopped) == 2 and len(held) == 4
    for bad, match in (({"min_steps": -1}, "min_steps must be a non-negative integer"),
                       ({"val_smoothing": 1.0}, r"val_smoothing must be in \[0, 1\)"),
                       ({"warmup_steps": 1.5}, "warmup_steps must be a non-negative integer")):
        with pytest.raises(ConfigError, match=match):
            _spec(census_params, store_dir, augment_dir, model="linear", **bad)
