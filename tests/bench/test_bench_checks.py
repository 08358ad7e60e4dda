"""Every bench row is judged (issue 26): checks are pass/fail with a stated bound and can fail; the exactness bound
is the worst of several float32 draws of the reference model; the device rows' checks (run here on the CPU, on
real loaders and models); a GPU row has no CPU-time rate; the summary refuses a file without the runner's header."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from sctab.bench import cases
from sctab.bench import exactness as criteria
from sctab.bench.cases.device import _loss_and_grads, device_batches_equal
from sctab.bench.checks import bounded, check_text, not_checks, passed
from sctab.bench.exactness import DEVICE_PROB_ATOL, EXACT_FACTOR, exactness, label_mismatches, step_agreement
from sctab.bench.fixtures import Config
from sctab.bench.runner import judge, table

CPU = torch.device("cpu")


# ------------------------------------------------------------------------------------------ checks
def test_a_bounded_check_passes_at_its_bound_and_fails_above_it():
    assert bounded(1e-6, 1e-6)["ok"] and not bounded(1.1e-6, 1e-6)["ok"]
    assert not bounded(float("nan"), 1.0)["ok"]  # a NaN never passes
    assert bounded(0, 0)["ok"] and not bounded(1, 0)["ok"]
    with pytest.raises(ValueError, match="bound must be a number >= 0"):
        bounded(0.0, -1.0)
    assert check_text({"err": bounded(3e-7, 2e-7)}) == "err 3.0e-07 <= 2.0e-07: NO"


def test_a_float_without_a_bound_is_not_a_check():
    check = {"same": True, "max |p - p_sort|": 0.0, "note": "text"}
    assert not_checks(check) == ["'max |p - p_sort|' = 0.0", "'note' = 'text'"]
    with pytest.raises(ValueError, match=r"not a check .*'max \|p - p_sort\|' = 0.0"):
        passed(check)
    assert passed({"same": True, "err": bounded(1.0, 2.0)})
    assert not passed({"same": True, "err": bounded(3.0, 2.0)})


def _measured(check: dict, samples=(100.0, 110.0, 120.0), info=None) -> dict:
    return {"name": "x", "figure": "X", "target": 50.0, "baseline_name": "b", "note": "", "status": "ok",
            "ours": {"samples": list(samples), "cpu_samples": [300.0] * 3, "unit": "cells/s", "label": "ours",
                     "peak_rss_mib": 100.0, "check": check, "info": info or {}},
            "baseline": {"samples": [10.0] * 3, "cpu_samples": [20.0] * 3, "label": "base", "peak_rss_mib": 90.0}}


def test_a_row_whose_value_exceeds_its_bound_is_not_met_however_fast():
    case = cases.Case("x", "X", 50.0, None)
    ok = judge(_measured({"err": bounded(1e-7, 2e-7)}), case, Config.quick())
    assert ok["checks_ok"] and ok["met"] and ok["met_cpu"]
    bad = judge(_measured({"err": bounded(3e-7, 2e-7)}), case, Config.quick())
    assert bad["median"] == 110.0 >= 50.0 and not bad["checks_ok"] and bad["met"] is False and bad["met_cpu"] is False
    text = table([bad], Config.quick())
    assert "err 3.0e-07 <= 2.0e-07: NO" in text and "| **no** / **no** |" in text


def test_a_row_reporting_a_float_as_a_check_is_an_error_naming_it():
    row = judge(_measured({"max |p - p_sort|": 0.0}), cases.Case("x", "X", 50.0, None), Config.quick())
    assert row["status"] == "error" and "'max |p - p_sort|' = 0.0" in row["note"] and "without a bound" in row["note"]
    assert "| error |" in table([row], Config.quick())


def test_peak_rss_limit_is_a_bounded_check():
    case = cases.Case("x", "X", 50.0, None, max_rss_mib=64.0)  # ours' peak is 100 MiB
    row = judge(_measured({}), case, Config.quick())
    assert row["met"] is False and row["ours"]["check"]["peak RSS (MiB, < 64)"] == {"value": 100.0, "bound": 64.0,
                                                                                    "ok": False}


def test_a_gpu_row_has_no_cpu_time_rate():
    case = cases.Case("d", "Device", 50.0, None, device_row=True)
    gpu = judge(_measured({"same": True}), case, Config(device="cuda:0"))
    assert np.isnan(gpu["cpu_median"]) and gpu["met_cpu"] is None and gpu["met"] is True
    text = table([gpu], Config.quick())
    assert "n/a (GPU row" in text and "| yes / - |" in text and "300" not in text.split("\n")[-1].split("|")[3]
    # the same row smoked on the CPU keeps its CPU-time rate
    cpu = judge(_measured({"same": True}), case, Config.quick())
    assert cpu["cpu_median"] == 300.0 and cpu["met_cpu"] is True


def test_info_is_shown_and_not_judged():
    row = judge(_measured({"same": True}, info={"max rows buffered": 24576}), cases.Case("x", "X", 50.0, None),
                Config.quick())
    assert row["met"] is True
    assert "same: yes; reported, not judged: max rows buffered 24576" in table([row], Config.quick())
    empty = judge(_measured({}), cases.Case("x", "X", 50.0, None), Config.quick())
    assert "no check" in table([empty], Config.quick())


# ------------------------------------------------------------------------------------------ exactness
KEY = f"max |p - p_f64| (<= {EXACT_FACTOR:g}x reference f32 error)"
CLASS = "cells with another class than the reference's (ties aside)"


def test_the_exactness_bound_is_the_worst_of_the_reference_draws():
    ref = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.5, 0.4]], dtype=torch.float64)
    plain, other = ref + 1e-7, ref + 2e-6  # two float32 draws of the reference: the second is the worse one
    ours = ref + 5e-6
    one = exactness([ours], [plain], [ref])  # one draw: bound 4e-7, ours fails
    assert not one["check"][KEY]["ok"] and one["check"][KEY]["bound"] == pytest.approx(4e-7)
    both = exactness([ours], [plain], [ref], [[other]])  # the worst draw: bound 8e-6, ours passes
    assert both["check"][KEY]["ok"] and both["check"][KEY]["bound"] == pytest.approx(8e-6)
    assert both["info"]["reference f32 vs f64"] == pytest.approx(2e-6)
    assert both["info"]["draws"] == "1.0e-07 / 2.0e-06"
    # the bound is the same whichever draw comes first
    swapped = exactness([ours], [other], [ref], [[plain]])
    assert swapped["check"][KEY]["bound"] == both["check"][KEY]["bound"]
    assert not exactness([ref + 9e-6], [plain], [ref], [[other]])["check"][KEY]["ok"]  # 4.5x the worst draw


def test_exactness_another_class_fails_and_a_tie_does_not():
    ref = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.45, 0.45 + 1e-4]], dtype=torch.float64)
    ours = ref.clone()
    ours[1, 1] += 2e-4  # ours picks class 1, 1e-4 behind in float64: far beyond the rounding bound
    res = exactness([ours], [ref + 1e-6], [ref])
    assert res["check"][CLASS] == {"value": 1.0, "bound": 0.0, "ok": False}
    tied = ref.clone()
    tied[1] = torch.tensor([0.1, 0.45, 0.45 + 1e-6], dtype=torch.float64)
    tb = tied.clone()
    tb[1, 2] -= 2e-6  # the reference picks class 1, ours class 2: within the rounding bound of float64
    res = exactness([tied], [tb], [tied])
    assert res["check"][CLASS]["ok"] and res["info"]["ties within rounding"] == 1


def test_the_check_runs_on_one_thread_and_gives_the_same_bound_every_time():
    """criteria.model_exactness on a real (small) TabNet: evaluated on one thread (threads restored after, also on an
    error), so two evaluations give the same errors and bound to the bit."""
    from tests.models.test_tabnet import _sharp_model, _sparse_data

    threads = torch.get_num_threads()
    with criteria.one_thread():
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == threads
    with pytest.raises(RuntimeError, match="inside"), criteria.one_thread():
        raise RuntimeError("inside")
    assert torch.get_num_threads() == threads

    class B:  # a loader batch: CSR x
        def __init__(self, x):
            self.x = x.to_sparse_csr()

    model = _sharp_model()
    batches = [B(_sparse_data(seed=21)), B(_sparse_data(seed=22))]
    runs = [criteria.model_exactness(model, batches, [b.x for b in batches]) for _ in range(2)]
    assert runs[0]["check"] == runs[1]["check"]
    assert runs[0]["info"]["reference f32 vs f64"] == runs[1]["info"]["reference f32 vs f64"] > 0
    assert runs[0]["check"][KEY]["ok"] and runs[0]["check"][CLASS]["ok"]
    assert "masks: median" in runs[0]["info"]["support"]


# ------------------------------------------------------------------------------------------ labels
def test_label_mismatches_count_other_labels_but_not_ties():
    probs = np.array([[0.6, 0.4], [0.5, 0.5 - 1e-6], [0.2, 0.8]])
    expected = np.array(["a", "a", "b"], dtype=object)
    assert label_mismatches(expected, expected, probs, 1e-4) == (0, 0)
    assert label_mismatches(np.array(["b", "a", "b"]), expected, probs, 1e-4) == (1, 0)  # a real other label
    assert label_mismatches(np.array(["a", "b", "b"]), expected, probs, 1e-4) == (0, 1)  # a tie: either is right
    assert label_mismatches(np.array(["a", "b", "b"]), expected, probs, 1e-7) == (1, 0)  # not within this bound
    with pytest.raises(ValueError, match="one of each per cell"):
        label_mismatches(expected[:2], expected, probs, 1e-4)


# ------------------------------------------------------------------------------------------ device rows, on the CPU
def test_step_agreement_uses_the_bounds_of_docs_gpu_and_can_fail():
    g = [torch.tensor([1.0, -2.0, 0.0]), torch.tensor([[0.5]])]
    ok = step_agreement(1.0 + 5e-5, [t + 5e-5 for t in g], 1.0, g, "32")
    assert passed(ok) and len(ok) == 2
    # float32: a gradient 1e-3 off where |grad| is 0 exceeds 1e-4 + 1e-3 * 0
    assert not passed(step_agreement(1.0, [g[0] + torch.tensor([0, 0, 1e-3]), g[1]], 1.0, g, "32"))
    assert not passed(step_agreement(1.01, g, 1.0, g, "32"))  # the loss 1e-2 off
    # bf16-mixed: 1% of the gradient vector passes, 5% does not; the loss within 2e-2 + 2e-2 |loss|
    assert passed(step_agreement(1.03, [t * 1.01 for t in g], 1.0, g, "bf16-mixed"))
    assert not passed(step_agreement(1.0, [t * 1.05 for t in g], 1.0, g, "bf16-mixed"))
    assert not passed(step_agreement(1.1, g, 1.0, g, "bf16-mixed"))
    with pytest.raises(ValueError, match="no device bounds for precision 'fp8'"):
        step_agreement(1.0, g, 1.0, g, "fp8")


@pytest.mark.parametrize("precision", ["32", "bf16-mixed"])
def test_device_step_check_on_the_cpu_passes_and_catches_other_weights(precision):
    """The device training step's check with the device = the CPU (what a GPU row runs with cuda): a real TabNet
    step on the same weights agrees; on weights nudged by 1% it does not."""
    from tests.models.test_tabnet import _sharp_model, _sparse_data

    model = _sharp_model()
    x, y = _sparse_data(seed=4).to_sparse_csr(), torch.randint(0, 7, (64,), generator=torch.Generator().manual_seed(0))
    got = _loss_and_grads(model, x, y, CPU, precision)
    ref = _loss_and_grads(model, x, y, CPU, precision)
    assert passed(step_agreement(*got, *ref, precision))
    other = copy.deepcopy(model)
    with torch.no_grad():
        for p in other.parameters():
            p.mul_(1.01)
    assert not passed(step_agreement(*_loss_and_grads(other, x, y, CPU, precision), *ref, precision))
    assert next(model.parameters()).grad is None  # the check works on copies: the measured model is untouched


def test_device_loader_check_compares_a_whole_epoch_and_catches_another_shuffle(tmp_path):
    from sctab.bench.synthetic import make_store
    from sctab.data.loaders import make_loader
    from sctab.data.store import Store

    store = Store(make_store(tmp_path / "s", 600, n_genes=40, n_classes=3, row_group_size=64))
    kw = dict(batch_size=128, shuffle=True, block_row_groups=2)
    csr = make_loader(store, "train", backend="sparse", x_format="csr", seed=0, **kw)
    dense = make_loader(store, "train", backend="sparse", x_format="dense", seed=0, **kw)
    res = device_batches_equal(csr, CPU, dense)
    assert res["batches equal the CPU loader's"] is True and res["_why"].startswith("0 of ")
    other = make_loader(store, "train", backend="sparse", x_format="dense", seed=1, **kw)
    res = device_batches_equal(csr, CPU, other)
    assert res["batches equal the CPU loader's"] is False and not res["_why"].startswith("0 of ")
    fewer = make_loader(store, "train", backend="sparse", x_format="dense", seed=0, **{**kw, "batch_size": 256})
    assert device_batches_equal(csr, CPU, fewer)["batches equal the CPU loader's"] is False


def test_device_probability_bound_is_docs_gpu_one():
    assert DEVICE_PROB_ATOL == 1e-4


# ------------------------------------------------------------------------------------------ summary
def _run_record(path, **drop):
    rec = {"command": "benchmarks/run.py", "commit": "abc1234", "started": "2026-11-25T22:10:00", "wall_s": 600.0,
           "load_start": [0.5] * 3, "load_end": [1.0] * 3, "quick": False,
           "rows": [{"name": "a", "figure": "A", "target": None, "min_ratio": None, "status": "ok", "median": 1.0,
                     "baseline_median": 1.0, "ratio": 1.0, "checks_ok": True, "ours": {"unit": "cells/s"}}]}
    for k in drop:
        rec.pop(k)
    path.write_text(json.dumps(rec))
    return path


def test_summary_refuses_a_record_without_the_runners_header(tmp_path):
    from sctab.bench.summary import load_runs

    assert len(load_runs([_run_record(tmp_path / "ok.json")])) == 1
    bare = _run_record(tmp_path / "bare.json", command=None, commit=None)
    with pytest.raises(SystemExit, match=r"bare\.json has no `make bench` header \(missing: command, commit\)"):
        load_runs([bare])
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(SystemExit, match=r"list\.json is not a `make bench` run record"):
        load_runs([tmp_path / "list.json"])


def test_summary_refuses_a_hand_edited_results_file_and_takes_a_runners_md(tmp_path):
    from sctab.bench.summary import REPO, load_runs, main

    hand = REPO / "benchmarks" / "results" / "hand-edited-notes-2026-11-24-not-a-bench-run.md"
    with pytest.raises(SystemExit, match=r"hand-edited-notes-2026-11-24-not-a-bench-run\.md has no `make bench` "
                                         r"header \(missing: command, commit\)"):
        load_runs([hand])
    with pytest.raises(SystemExit, match="has no `make bench` header"):
        main([str(hand), "--out", "-"])
    md = tmp_path / "2026-11-25-2210.md"
    md.write_text("## scTab bench, 2026-11-25 22:10\n\nCommand: `benchmarks/run.py`; commit abc1234; 1 rows\n")
    with pytest.raises(SystemExit, match=r"no run record beside it \(2026-11-25-2210\.json is missing\)"):
        load_runs([md])
    _run_record(md.with_suffix(".json"))
    assert load_runs([md])[0]["commit"] == "abc1234"
