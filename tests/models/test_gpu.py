"""The GPU suite (`make test-gpu`, `pytest -m gpu`): what only a CUDA device can show.

Skipped as a whole, with the reason, where torch sees no CUDA device (a CPU-only build, or no GPU); run in
full where it does (Python 3.12 and a CUDA build of torch, as GPU machines commonly have):

* the fast paths equal the reference TabNet (sctab.models.reference_tabnet) on CUDA, forward and gradients,
  dense and CSR input, and CUDA equals the CPU on the same weights; under bf16-mixed, fast equals the
  reference to bf16 rounding;
* a two-epoch scTab run through Ray Train with one GPU worker on the test store;
* XGBoost trains on CUDA, in a fit and in the trials of a Tune study alike;
* `sctab annotate --device cuda` gives the CPU's labels;
* bf16-mixed training reaches the float32 run's validation macro F1 within 0.01.

``SCTAB_TEST_GPU_DEVICE=cpu pytest -m gpu`` rehearses the suite on the CPU (same code paths, no CUDA): a check
of the suite itself on a machine without a GPU, not a substitute for the GPU run (docs/gpu.md).
"""

from __future__ import annotations

import copy
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sctab.models.device import cuda_usable, resolve_device, torch_build
from sctab.models.reference_tabnet import ReferenceTabNet
from tests.models.test_tabnet import _reference_forward, _sharp_model, _sparse_data

DEVICE = os.environ.get("SCTAB_TEST_GPU_DEVICE", "cuda")
_REASON = (f"no CUDA device: {torch_build()}" if torch.version.cuda is None else
           f"no CUDA device: {torch_build()} but torch.cuda.is_available() is False")
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.timeout(1200),
    pytest.mark.skipif(DEVICE.startswith("cuda") and not cuda_usable(), reason=_REASON),
]


@pytest.fixture(scope="module")
def dev() -> torch.device:
    return resolve_device(DEVICE)


def _grads(model, x, y):
    model.zero_grad(set_to_none=True)
    torch.manual_seed(0)
    logits, m_loss = model(x)
    loss = F.cross_entropy(logits.float(), y) + 0.1 * m_loss
    loss.backward()
    return logits.detach(), [p.grad.detach().clone() for p in model.parameters()]


def test_fast_paths_equal_the_reference_model_forward_and_gradients(dev):
    cpu_model = _sharp_model()
    model = copy.deepcopy(cpu_model).to(dev)
    x = _sparse_data(seed=3).to(dev)
    with torch.no_grad():
        ref_logits, ref_loss = _reference_forward(model, x)
        fast, fast_loss = model(x)  # eval: top-k entmax, sparse masked input
        paths = torch.cat([at.selector.last_info.path for at in model.encoder.att_transformers])
        assert (paths >= 0).any() and (paths < 0).any()  # top-k rows and full-sort rows both on the device
        csr, csr_loss = model(x.to_sparse_csr())  # eval: the sparse BN input as well
        torch.testing.assert_close(fast, ref_logits, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(csr, ref_logits, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(fast_loss, ref_loss, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(csr_loss, ref_loss, atol=1e-5, rtol=1e-5)
        # the device does not change the model: CUDA == CPU on the same weights
        torch.testing.assert_close(fast.cpu(), cpu_model(x.cpu())[0], atol=1e-4, rtol=1e-4)
    y = torch.randint(0, 7, (x.shape[0],), device=dev)
    model.train()
    fast_logits, fast_grads = _grads(model, x, y)
    csr_logits, csr_grads = _grads(model, x.to_sparse_csr(), y)
    text_logits, text_grads = _grads(ReferenceTabNet.like(model), x, y)
    torch.testing.assert_close(fast_logits, text_logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(csr_logits, fast_logits, atol=0, rtol=0)  # CSR in training: densified, same
    for a, b, c in zip(fast_grads, text_grads, csr_grads):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-3)
        torch.testing.assert_close(c, a, atol=0, rtol=0)


def test_fast_paths_equal_the_reference_model_under_bf16_mixed(dev):
    from sctab.models.device import autocast

    model = _sharp_model().to(dev).train()
    x, y = _sparse_data(seed=6).to(dev), torch.randint(0, 7, (64,), device=dev)
    out = {}
    for fast in (True, False):
        m = copy.deepcopy(model) if fast else ReferenceTabNet.like(model)
        with autocast(dev, "bf16-mixed"):
            out[fast] = _grads(m, x, y)
    (lf, gf), (ls, gs) = out[True], out[False]
    assert lf.dtype == torch.bfloat16
    torch.testing.assert_close(lf.float(), ls.float(), atol=2e-2, rtol=2e-2)
    flat = [torch.cat([g.flatten() for g in gs_]) for gs_ in (gf, gs)]
    assert float((flat[0] - flat[1]).norm() / flat[1].norm()) < 2e-2


def test_two_epoch_sctab_run_through_ray_train_on_one_gpu_worker(census_params, store_dir, augment_dir, workdir,
                                                                 dev):
    from mlflow.tracking import MlflowClient

    from sctab.train.fitting import fit
    from sctab.train.runners import RayTrainRunner
    from sctab.train.spec import spec_from_params

    tmp, uri = workdir
    params = {k: v for k, v in copy.deepcopy(census_params).items() if not k.startswith("_")}
    spec = spec_from_params(params, "sctab", store=str(store_dir), augmentations=str(augment_dir), epochs=2,
                            patience=None, num_workers=1, cpus_per_worker=1, device=DEVICE)
    result = fit(spec, params, tmp / "model", runner=RayTrainRunner())
    run = MlflowClient(uri).get_run(result.run_id)
    assert run.data.tags["worker_device"].startswith(dev.type), run.data.tags["worker_device"]
    assert [m.step for m in MlflowClient(uri).get_metric_history(result.run_id, "val_f1_macro")] == [0, 1]
    assert result.metrics["epochs_run"] == 2 and 0.0 < result.metrics["val_f1_macro"] <= 1.0
    assert result.metrics["train_cells_per_s"] > 0


def test_xgboost_trains_on_cuda_in_a_fit_and_in_tune_trials(census_params, store_dir, pca_dir, workdir, dev):
    from mlflow.tracking import MlflowClient

    from sctab.train.baselines import train_baseline
    from sctab.train.spec import make_spec
    from sctab.train.tune import run_study

    params = copy.deepcopy(census_params)
    params["models"]["xgboost"].update({"n_estimators": 20, "nthread": 1, "device": "auto"})
    scores = {}
    for device in ("cpu", DEVICE):
        spec = make_spec(params, "xgboost", store=str(store_dir), pca_dir=str(pca_dir), overrides={"device": device})
        clf, info = train_baseline(spec)
        assert clf.device.startswith(device), clf.device
        from sctab.data.store import Store
        from sctab.evaluate.scores import score_split

        scores[device] = score_split(clf, Store(store_dir), "val")["f1_macro"]
    assert abs(scores[DEVICE] - scores["cpu"]) < 0.05, scores  # GPU hist: other float sums, same model
    # a study: with gpus_per_trial auto each trial gets a share of the GPU and trains where the final fit does
    tmp, uri = workdir
    params["tune"].update({"max_concurrent": 2, "cpus_per_trial": 1, "report_every": 5, "gpus_per_trial": "auto"})
    summary = run_study("xgboost", params, store=store_dir, pca_dir=pca_dir, storage=tmp / "rr", num_samples=2,
                        reference_runs=False, verbose=0)
    client = MlflowClient(uri)
    parent = client.get_run(summary["parent_run_id"])
    trials = client.search_runs([parent.info.experiment_id], filter_string="tags.role = 'trial'")
    assert len(trials) == 2
    assert all(t.data.tags["worker_device"].startswith(dev.type) for t in trials), \
        [t.data.tags.get("worker_device") for t in trials]
    if dev.type == "cuda":
        assert '"gpu"' in parent.data.tags["trial_resources"]


def test_annotate_on_cuda_gives_the_cpu_labels(bundle_dir, test_counts, tmp_path):  # noqa: F811
    import anndata

    from sctab.cli import main as cli

    src = tmp_path / "in.h5ad"
    test_counts.write_h5ad(src)
    out = {}
    for device in ("cpu", DEVICE):
        path = tmp_path / f"out-{device}.h5ad"
        assert cli(["annotate", str(src), "-o", str(path), "--model", str(bundle_dir), "--device", device,
                    "-q"]) == 0
        out[device] = anndata.read_h5ad(path).obs
    assert (out[DEVICE]["sctab_label"] == out["cpu"]["sctab_label"]).all()
    np.testing.assert_allclose(out[DEVICE]["sctab_probability"], out["cpu"]["sctab_probability"], atol=1e-4)


def test_bf16_mixed_training_reaches_the_float32_validation_f1(census_params, store_dir, augment_dir, tmp_path,
                                                               dev):
    from sctab.train.loop import LocalSession, run_training
    from sctab.train.spec import spec_from_params

    best = {}
    for precision in ("32", "bf16-mixed"):
        spec = spec_from_params(census_params, "sctab", store=str(store_dir), augmentations=str(augment_dir),
                                precision=precision, device=DEVICE)
        out = run_training(spec, LocalSession(tmp_path / precision, device=dev))
        best[precision] = out["best_val_f1_macro"]
    assert best["32"] > 0.3, best  # the float32 run learned something to compare with
    assert best["bf16-mixed"] >= best["32"] - 0.01, best
