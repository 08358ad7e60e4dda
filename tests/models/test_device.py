"""The device policy, the host -> device copy and bf16-mixed precision, checked on whatever this machine has.

The GPU itself is tests/models/test_gpu.py's; here is what runs anywhere: ``auto`` resolves to what torch can use,
``cuda`` without a usable GPU is an error naming the torch build, settings are validated where params are
read, Ray gets GPUs only when torch can use them, bf16 autocast trains (on the CPU too) with entmax and the
losses in float32, and a CSR batch reaches the model as the same values.
"""

from __future__ import annotations

import copy
import re

import pytest
import torch
import torch.nn.functional as F

from sctab.config import ConfigError, check_device, check_precision, check_settings
from sctab.models.device import DeviceError, autocast, cuda_usable, model_input, resolve_device, to_device
from sctab.models.reference_tabnet import ReferenceTabNet
from sctab.models.xgboost_model import XGBoostConfigError
from sctab.models.xgboost_model import check_config as check_xgboost
from sctab.models.xgboost_model import resolve_device as xgboost_device
from sctab.train.ray_train import _use_gpu, model_device_setting, trial_resources
from sctab.train.spec import TrainSpec


# ------------------------------------------------------------------------------------------- the policy
def test_settings_are_validated_with_the_key_named():
    assert check_device("CUDA") == "cuda" and check_device("cuda:1") == "cuda:1" and check_device("auto") == "auto"
    assert check_precision(32) == "32" and check_precision("bf16-mixed") == "bf16-mixed"
    with pytest.raises(ConfigError, match=r"train.device must be one of auto, cpu, cuda .*'gpu'"):
        check_device("gpu", "train.device")
    with pytest.raises(ConfigError, match="precision must be one of 32, bf16-mixed, got 16"):
        check_precision(16)
    with pytest.raises(ConfigError, match="p.yaml: train.precision"):
        check_settings({"train": {"precision": "fp16"}}, "p.yaml")
    with pytest.raises(ConfigError, match="tune.gpus_per_trial must be auto or a number"):
        check_settings({"tune": {"gpus_per_trial": "half"}})
    with pytest.raises(ConfigError, match="train.device of sctab"):
        TrainSpec(model="sctab", store=".", device="tpu")
    with pytest.raises(XGBoostConfigError, match="device must be one of"):
        check_xgboost({"device": "gpu"})


def test_auto_is_what_torch_can_use_and_cpu_is_always_the_cpu():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if cuda_usable() else "cpu")
    assert xgboost_device("auto") == ("cuda" if cuda_usable() else "cpu")
    assert xgboost_device("cpu") == "cpu"


def test_cuda_without_a_usable_gpu_names_the_torch_build():
    if cuda_usable():
        assert resolve_device("cuda").type == "cuda"
        with pytest.raises(DeviceError, match="sees 1 GPU|sees \\d+ GPU"):
            resolve_device(f"cuda:{torch.cuda.device_count()}")
        return
    with pytest.raises(DeviceError) as info:
        resolve_device("cuda")
    msg = str(info.value)
    assert torch.__version__ in msg
    if torch.version.cuda is None:  # a CPU-only build: how to get a CUDA one
        assert "CPU-only build (torch.version.cuda is None)" in msg and "download.pytorch.org/whl/cu" in msg
        assert f"torch=={torch.__version__.split('+')[0]} " in msg  # the release, not the +cpu wheel
    else:  # a CUDA build that sees no GPU
        assert "sees no GPU" in msg
    with pytest.raises(DeviceError, match=re.escape(torch.__version__)):
        xgboost_device("cuda")


def test_ray_train_uses_gpus_only_when_torch_can():
    spec = TrainSpec(model="linear", store=".", num_workers=1)
    with_gpu, without = {"CPU": 4, "GPU": 1}, {"CPU": 4}
    assert _use_gpu(spec, without) is False
    assert _use_gpu(spec.with_(device="cpu"), with_gpu) is False
    assert _use_gpu(spec.with_(use_gpu=False), with_gpu) is False
    # a GPU node whose torch cannot use CUDA: auto stays on the CPU instead of failing inside the worker
    assert _use_gpu(spec, with_gpu) is torch.backends.cuda.is_built()
    if not torch.backends.cuda.is_built():
        with pytest.raises(DeviceError, match="CPU-only build"):
            _use_gpu(spec.with_(device="cuda"), with_gpu)
    else:
        with pytest.raises(RuntimeError, match="needs one GPU per worker"):
            _use_gpu(spec.with_(device="cuda", num_workers=2), with_gpu)


def test_trials_get_a_gpu_share_when_the_profile_asks():
    cuda_build = torch.backends.cuda.is_built()
    cluster = {"CPU": 16, "GPU": 1}
    assert trial_resources("auto", "auto", 2, 4, {"CPU": 16}, "tune") == {"cpu": 2}
    assert trial_resources("auto", "cpu", 2, 4, cluster, "tune") == {"cpu": 2}
    assert trial_resources(0, "auto", 2, 4, cluster, "tune") == {"cpu": 2}
    if cuda_build:
        assert trial_resources("auto", "auto", 2, 4, cluster, "tune") == {"cpu": 2, "gpu": 0.25}
        assert trial_resources("auto", "auto", 2, 3, cluster, "tune")["gpu"] == pytest.approx(0.3333)
        assert trial_resources("auto", "auto", 2, 2, {"GPU": 4}, "tune")["gpu"] == 1.0
        assert trial_resources(0.5, "auto", 2, 4, cluster, "experiments") == {"cpu": 2, "gpu": 0.5}
        with pytest.raises(ConfigError, match="experiments.gpus_per_trial is 2, but the Ray cluster has 1"):
            trial_resources(2, "auto", 2, 4, cluster, "experiments")
    else:  # fractional GPUs asked of a CPU-only torch: said before any trial starts
        assert trial_resources("auto", "auto", 2, 4, cluster, "tune") == {"cpu": 2}
        with pytest.raises(DeviceError, match="tune.gpus_per_trial is 0.5, but torch .* CPU-only build"):
            trial_resources(0.5, "auto", 2, 4, cluster, "tune")


def test_each_model_follows_its_own_device_setting():
    params = {"train": {"device": "cuda"}, "models": {"xgboost": {"device": "cpu"}}}
    assert model_device_setting(params, "sctab") == "cuda"
    assert model_device_setting(params, "xgboost") == "cpu"
    assert model_device_setting(params, "celltypist") == "cpu"
    assert model_device_setting({}, "mlp") == "auto"


def test_profiles_carry_the_policy_and_the_full_scale_one_feeds_a_gpu():
    from sctab.config import load_profile

    for name in ("tiny", "bench", "scale", "census-2023-05-15"):
        p = load_profile(name)
        assert p["train"]["device"] == "auto" and str(p["train"]["precision"]) == "32", name
        assert p["tune"]["gpus_per_trial"] == "auto" and p["experiments"]["gpus_per_trial"] == "auto", name
    full = load_profile("census-2023-05-15")
    assert full["train"]["loader"] == "sparse" and full["store"]["layout"] == "both"


# ------------------------------------------------------------------------------------------- host -> device
def test_a_csr_batch_reaches_the_model_as_the_same_values():
    x = torch.relu(torch.randn(6, 9)) * (torch.rand(6, 9) < 0.3)
    csr = x.to_sparse_csr()
    dev = resolve_device("auto")
    dense = model_input(csr, dev, dense=True)
    assert dense.layout == torch.strided and dense.device.type == dev.type
    torch.testing.assert_close(dense.cpu(), x, rtol=0, atol=0)
    kept = model_input(csr, dev, dense=False)  # TabNet reads the CSR batch itself
    assert kept.layout == torch.sparse_csr
    torch.testing.assert_close(kept.to_dense().cpu(), x, rtol=0, atol=0)
    # on the CPU the copy is the tensor itself: nothing pinned, nothing copied
    assert to_device(x, torch.device("cpu")) is x
    assert not to_device(x, torch.device("cpu")).is_pinned()


# ------------------------------------------------------------------------------------------- bf16-mixed
def _sharp_model():
    from tests.models.test_tabnet import _sharp_model as sharp

    return sharp()


def test_bf16_mixed_trains_with_entmax_and_losses_in_float32():
    from tests.models.test_tabnet import _sparse_data

    model = _sharp_model().train()
    x, y = _sparse_data(seed=4), torch.randint(0, 7, (64,))
    dev = torch.device("cpu")
    with autocast(dev, "bf16-mixed"):
        masks = model.forward_masks(x)
        logits, m_loss = model(x)
    assert logits.dtype == torch.bfloat16  # the matmuls ran in bf16 ...
    assert masks[0].dtype == torch.float32 and m_loss.dtype == torch.float32  # ... entmax did not
    loss = F.cross_entropy(logits.float(), y) + model.lambda_sparse * m_loss
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)
    with autocast(dev, "32"):
        assert model(x)[0].dtype == torch.float32


def test_fast_path_equals_the_reference_under_bf16_mixed():
    """Under bf16-mixed both paths run the same bf16 layers; the masked first layer and entmax stay float32,
    so the fast path is the reference model to float32 rounding there, and to bf16 rounding overall."""
    from tests.models.test_tabnet import _sparse_data

    base = _sharp_model().train()
    x, y = _sparse_data(seed=6), torch.randint(0, 7, (64,))
    out = {}
    for fast in (True, False):
        model = copy.deepcopy(base) if fast else ReferenceTabNet.like(base)
        torch.manual_seed(0)
        with autocast(torch.device("cpu"), "bf16-mixed"):
            logits, m_loss = model(x)
        loss = F.cross_entropy(logits.float(), y) + model.lambda_sparse * m_loss
        loss.backward()
        out[fast] = (logits.float().detach(), torch.cat([p.grad.flatten() for p in model.parameters()]))
    (lf, gf), (ls, gs) = out[True], out[False]
    torch.testing.assert_close(lf, ls, atol=2e-2, rtol=2e-2)
    assert float((gf - gs).norm() / gs.norm()) < 2e-2


def test_the_training_loop_trains_in_bf16_mixed(census_params, store_dir, augment_dir, tmp_path):
    from sctab.train.loop import LocalSession, run_training
    from sctab.train.spec import spec_from_params

    spec = spec_from_params(census_params, "sctab", store=str(store_dir), augmentations=str(augment_dir),
                            epochs=1, precision="bf16-mixed", device="cpu")
    out = run_training(spec, LocalSession(tmp_path / "ckpt", device="cpu"))
    assert out["train_rows"] > 0 and torch.isfinite(torch.tensor(out["train_loss"]))
    assert 0.0 <= out["val_f1_macro"] <= 1.0


def test_training_on_the_sparse_layout_equals_the_dense_one(census_params, store_dir, tmp_path):
    """The full-scale profile's loader: CSR batches densified on the device train exactly as dense batches."""
    import shutil

    from sctab.data.store_writer import write_sparse_layout
    from sctab.train.loop import LocalSession, run_training
    from sctab.train.spec import spec_from_params

    root = tmp_path / "store"
    shutil.copytree(store_dir, root)
    write_sparse_layout(root)
    out = {}
    for loader in ("stream", "sparse"):
        spec = spec_from_params(census_params, "linear", store=str(root), epochs=2, loader=loader, device="cpu")
        out[loader] = run_training(spec, LocalSession(tmp_path / f"ckpt-{loader}", device="cpu"))["history"]
    for dense, sparse in zip(out["stream"], out["sparse"]):
        assert sparse["train_rows"] == dense["train_rows"] and sparse["val_rows"] == dense["val_rows"]
        assert sparse["train_loss"] == pytest.approx(dense["train_loss"], rel=1e-6)
        assert sparse["val_f1_macro"] == pytest.approx(dense["val_f1_macro"], abs=1e-9)


# ------------------------------------------------------------------------------------------- command lines
def test_train_command_refuses_a_gpu_torch_cannot_use_before_any_run(census_params, store_dir, tmp_path, capsys,
                                                                     tracking):
    import yaml

    from sctab.models.device import check_cuda_build
    from sctab.train.command import main

    if torch.version.cuda is not None:  # a CUDA build passes the driver's check (the GPU suite trains on it)
        check_cuda_build("cuda", "--device")
        return
    params = {k: v for k, v in census_params.items() if not k.startswith("_")}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(SystemExit) as info:
        main(["--model", "linear", "--params", str(tmp_path / "params.yaml"), "--store", str(store_dir),
              "--out", str(tmp_path / "model"), "--device", "cuda"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "--device 'cuda'" in err and "CPU-only build" in err
    assert not (tmp_path / "model").exists() and not (tmp_path / "mlflow.db").exists()
    with pytest.raises(SystemExit):
        main(["--model", "linear", "--out", "x", "--device", "tpu"])
    assert "--device must be one of auto, cpu, cuda" in capsys.readouterr().err


def test_annotate_device_option(bundle_dir, test_counts, tmp_path, capsys):  # noqa: F811
    import anndata

    from sctab.cli import main as cli

    src = tmp_path / "in.h5ad"
    test_counts.write_h5ad(src)
    auto, cpu = tmp_path / "auto.h5ad", tmp_path / "cpu.h5ad"
    assert cli(["annotate", str(src), "-o", str(cpu), "--model", str(bundle_dir), "--device", "cpu", "-q"]) == 0
    assert cli(["annotate", str(src), "-o", str(auto), "--model", str(bundle_dir), "-q"]) == 0
    a, c = anndata.read_h5ad(auto).obs, anndata.read_h5ad(cpu).obs
    assert (a["sctab_label"] == c["sctab_label"]).all()
    if not cuda_usable():  # asking for a GPU that is not there: a clear error, no output file
        bad = tmp_path / "cuda.h5ad"
        assert cli(["annotate", str(src), "-o", str(bad), "--model", str(bundle_dir), "--device", "cuda", "-q"]) == 2
        assert "torch" in capsys.readouterr().err and not bad.exists()
