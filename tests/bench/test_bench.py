"""`make bench`'s runner on tiny shapes: every registered case runs, the table has every row and column."""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pytest

from sctab.bench.cases import REGISTRY
from sctab.bench.fixtures import Config
from sctab.bench.runner import table
from tests.paths import REPO_ROOT as REPO


@pytest.mark.slow  # ~1 minute: builds a tiny store and starts two subprocesses per case
def test_quick_bench_runs_every_case_and_writes_the_table(tmp_path):
    out = tmp_path / "result.md"
    r = subprocess.run([sys.executable, str(REPO / "benchmarks" / "run.py"), "--quick", "--repeats", "1",
                        "--cache", str(tmp_path / "cache"), "--out", str(out),
                        "--cases", "loader_csr", "infer_csr", "annotate_e2e", "train_e2e"],
                       capture_output=True, text=True, cwd=REPO, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    text = out.read_text()
    assert text.strip() in r.stdout
    # one invocation, saying how it was made: command, commit, machine, load, wall time, repeats per row
    for part in ("Command: `benchmarks/run.py --quick", "commit ", "4 rows, all from this invocation", "wall time",
                 "CPU cores", "Load average (1, 5, 15 min)", "Exact: ours at most 4x"):
        assert part in text, part
    assert "| Figure | Ours, wall (median, min-max) | Ours, CPU-time rate | Baseline, same run" in text
    main_table, roofline = text.split("### How close to the limit")
    lines = [ln for ln in main_table.splitlines() if ln.startswith("| ")][1:]
    assert len(lines) == 4
    # the roofline of the same run: both ceilings, and the model rows' work and fraction of attainable
    assert "float32 GEMM" in roofline and "GFLOP/s" in roofline and "GB/s" in roofline
    roof = [ln for ln in roofline.splitlines() if ln.startswith("| ")][1:]
    assert [ln.split("<br>")[0].split(",")[0] for ln in roof] == ["| scTab inference",
                                                                  "| `sctab annotate` end to end"]
    assert "sparse CSR batch" in roof[0]
    assert all(re.search(r"\| \d+\.\d% \|$", ln) for ln in roof), roof
    assert "densified" in lines[1] or "sparse first layer ran" in lines[1]
    e2e = lines.pop()  # the train stage end to end, against the isolated step: a ratio target
    assert "Train stage end to end" in e2e and ">= 0.9x baseline" in e2e and "isolated step" in e2e
    # the run's record beside the table: every row, for `make bench-summary`
    import json

    rec = json.loads(out.with_suffix(".json").read_text())
    assert [r["name"] for r in rec["rows"]] == ["loader_csr", "infer_csr", "annotate_e2e", "train_e2e"]
    assert all(r["status"] == "ok" for r in rec["rows"]), [(r["name"], r["status"], r.get("note")) for r in rec["rows"]]
    assert rec["quick"] and rec["commit"] and len(rec["load_start"]) == 3
    assert rec["rows"][3]["met"] == (rec["rows"][3]["ratio"] >= 0.9)
    assert rec["roofline"]["peaks"]["gemm_flops"] > 0 and len(rec["roofline"]["rows"]) == 2
    assert all(0 < r["fraction"] and r["flop_per_cell"] > 0 for r in rec["roofline"]["rows"])
    for ln in lines:  # measured rows: a number, a ratio, a peak RSS, and the exactness checks passed
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", ln)[1:-1]]
        assert "cells/s" in cells[1] and cells[4].endswith("x") and "MiB" in cells[7], ln
        assert "NO" not in cells[8], (ln, r.stderr[-1500:])
        assert "1 repeats" in cells[1] and "1 repeats" in cells[3], ln
    for ln in lines[1:]:  # model rows: the criterion with its bound, passed, and the support sizes they ran on
        assert r"max \|p - p_f64\| (<= 4x reference f32 error) " in ln, ln
        assert "cells with another class than the reference's (ties aside) 0 <= 0: yes" in ln, ln
        assert "reported, not judged: reference f32 vs f64 " in ln, ln
    assert "masks: median" in lines[1]
    assert "`sctab annotate` end to end" in lines[2] and "3,000 cells" in lines[2]
    assert "written labels other than the fast path's (ties aside) 0 <= 0: yes" in lines[2]
    assert "peak RSS (MiB, < 4,096) " in lines[2]
    for row in rec["rows"][:3]:  # every check in the record is pass/fail with its bound
        assert row["ours"]["check"] and row["checks_ok"] is True
        assert all(isinstance(v, bool) or set(v) == {"value", "bound", "ok"} for v in row["ours"]["check"].values())
    assert "whole epoch" in lines[0]  # the dense baseline reads what it delivers


def test_runner_help_and_unknown_case():
    r = subprocess.run([sys.executable, str(REPO / "benchmarks" / "run.py"), "--help"], capture_output=True,
                       text=True, cwd=REPO)
    assert r.returncode == 0 and "--quick" in r.stdout
    r = subprocess.run([sys.executable, str(REPO / "benchmarks" / "run.py"), "--cases", "nope"],
                       capture_output=True, text=True, cwd=REPO)
    assert r.returncode != 0 and "unknown case" in r.stderr


def test_table_marks_missed_targets_and_errors():
    rows = [{"name": "a", "figure": "A", "target": 10.0, "baseline_name": "b", "note": "", "status": "ok",
             "median": 5.0, "baseline_median": 2.5, "ratio": 2.0, "met": False, "met_cpu": True,
             "cpu_median": 12.0, "baseline_cpu_median": 3.0,
             "ours": {"samples": [4.0, 5.0, 6.0], "unit": "cells/s", "label": "x", "peak_rss_mib": 100.0,
                      "check": {"exact": True}},
             "baseline": {"samples": [2.5], "label": "y", "peak_rss_mib": 90.0}},
            {"name": "b", "figure": "B", "target": None, "baseline_name": "", "note": "ours failed: boom",
             "status": "error"}]
    text = table(rows, Config.quick())
    assert "| **no** / yes |" in text and "2.0x" in text and "| 12.00 |" in text
    assert "(4.00-6.00)" in text and "100 / 90 MiB" in text
    assert "| error |" in text and "boom" in text
    assert np.isclose(rows[0]["ratio"], rows[0]["median"] / rows[0]["baseline_median"])
    assert set(REGISTRY) >= {"loader_csr", "loader_dense", "infer_dense", "infer_csr", "train_step", "annotate_e2e"}


DEVICE_ROWS = {"device_loader", "device_train_step", "device_train_step_bf16", "device_train_e2e", "device_inference",
               "device_annotate"}


def test_device_rows_are_registered_and_cuda_without_one_is_a_clear_error():
    assert {n for n, c in REGISTRY.items() if c.device_row} == DEVICE_ROWS
    assert REGISTRY["device_train_step"].target == 30_000 and REGISTRY["device_inference"].target == 150_000
    import torch

    if torch.cuda.is_available():
        return
    r = subprocess.run([sys.executable, str(REPO / "benchmarks" / "run.py"), "--quick", "--device", "cuda",
                        "--out", "-"], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode != 0 and "CPU-only build" in r.stderr or "sees no GPU" in r.stderr, r.stderr[-1000:]


@pytest.mark.slow  # ~2 minutes: the device rows, on the CPU (what a machine without a GPU can smoke)
def test_quick_bench_device_rows_run(tmp_path):
    out = tmp_path / "result.md"
    r = subprocess.run([sys.executable, str(REPO / "benchmarks" / "run.py"), "--quick", "--repeats", "1",
                        "--cache", str(tmp_path / "cache"), "--out", str(out), "--device", "cpu",
                        "--cases", *sorted(DEVICE_ROWS)],
                       capture_output=True, text=True, cwd=REPO, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    text = out.read_text()
    assert "no GPU, device rows on the CPU" in text
    lines = [ln for ln in text.splitlines() if ln.startswith("| ")][1:]
    assert len(lines) == len(DEVICE_ROWS)
    for ln in lines:  # every device row has checks (device = the CPU here), passed, and its CPU-time rate
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", ln)[1:-1]]
        assert "cells/s" in cells[1] and cells[4].endswith("x"), ln
        assert "no check" not in cells[8] and ": yes" in cells[8] and "NO" not in cells[8], ln
    byname = dict(zip(sorted(DEVICE_ROWS), lines))
    assert "batches equal the CPU loader's: yes" in byname["device_loader"]
    assert r"max \|grad - grad_cpu\| / (0.0001 + 0.001 \|grad_cpu\|)" in byname["device_train_step"]
    assert r"\|grad - grad_cpu\| / \|grad_cpu\| (whole vector)" in byname["device_train_step_bf16"]
    assert r"max \|p_device - p_cpu\| " in byname["device_inference"]
    assert "<= 1.0e-04: yes" in byname["device_inference"]
    assert "labels other than the CPU's (ties aside) 0 <= 0: yes" in byname["device_annotate"]
    assert r"\|loss - loss_cpu\| / (1e-4 + 1e-4 \|loss_cpu\|), first step" in byname["device_train_e2e"]
    assert "sparse loader from disk + train_step" in byname["device_train_e2e"]


def _record(path, started, medians, ratio=2.0, checks_ok=True):
    import json

    rows = [{"name": "infer", "figure": "Inference", "target": 100.0, "min_ratio": None, "status": "ok",
             "median": m, "baseline_median": m / ratio, "ratio": ratio, "checks_ok": checks_ok,
             "baseline_name": "tb", "note": "", "ours": {"unit": "cells/s"}} for m in medians[:1]]
    rows.append({"name": "e2e", "figure": "End to end", "target": None, "min_ratio": 0.9, "status": "ok",
                 "median": medians[1], "baseline_median": 100.0, "ratio": medians[1] / 100.0, "checks_ok": True,
                 "baseline_name": "iso", "note": "", "ours": {"unit": "cells/s"}})
    path.write_text(json.dumps({"command": "benchmarks/run.py", "started": started, "commit": "abc1234",
                                "wall_s": 600.0, "quick": False,
                                "load_start": [0.5, 0.5, 0.5], "load_end": [1.0, 1.0, 1.0], "rows": rows}))
    return path


def test_summary_over_runs_meets_targets_by_the_median(tmp_path):
    from sctab.bench.summary import latest_runs, load_runs, render, summarise

    paths = [_record(tmp_path / "a.json", "2026-11-25T22:10:00", [90.0, 95.0]),
             _record(tmp_path / "b.json", "2026-11-25T23:10:00", [120.0, 85.0]),
             _record(tmp_path / "c.json", "2026-11-26T00:10:00", [110.0, 93.0])]
    s = {r["name"]: r for r in summarise(load_runs(paths))}
    # rate target: median of 90/120/110 = 110 >= 100, though one run missed it
    assert s["infer"]["median"] == 110.0 and (s["infer"]["min"], s["infer"]["max"]) == (90.0, 120.0)
    assert s["infer"]["met"] is True
    # ratio target: median ratio 0.93 >= 0.9
    assert abs(s["e2e"]["ratio"] - 0.93) < 1e-12 and s["e2e"]["met"] is True
    # a failed check in any run: not met, whatever the speed
    _record(paths[1], "2026-11-25T23:10:00", [120.0, 85.0], checks_ok=False)
    s = {r["name"]: r for r in summarise(load_runs(paths))}
    assert s["infer"]["met"] is False
    text = render(load_runs(paths), list(s.values()), "benchmarks/summarize.py a b c")
    assert "| Inference | 110 cells/s | 90.00-120 | 90.00 / 120 / 110 |" in text and "(a check failed)" in text
    assert "not every run started in a different hour" not in text
    assert latest_runs(2, tmp_path) == [paths[1], paths[2]]
    same_hour = _record(tmp_path / "d.json", "2026-11-26T00:40:00", [100.0, 99.0])
    assert "not every run started in a different hour" in render(load_runs([paths[2], same_hour]), [], "x")


def test_a_part_that_does_not_finish_is_stopped_and_named(tmp_path):
    """A hung part (merlin's loader once deadlocked for good) becomes an error row, not a stalled bench."""
    from sctab.bench.runner import _run_part

    res = _run_part("entmax", "ours", Config.quick(cache=str(tmp_path)), sys.executable, timeout_s=0.5)
    assert "did not finish within 0 s" in res["error"] or "did not finish within 1 s" in res["error"]


def test_inputs_built_in_a_spawned_process_name_the_cause_of_a_failure(tmp_path):
    """A cached input built in its own process (e.g. the annotate row's h5ad and bundle) that fails reports
    the child's exception, not just an exit code: on a GPU machine this was all a bench row showed."""
    import os

    from sctab.bench.fixtures import in_spawned_process

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(RuntimeError, match=r"makedirs failed in its process: (FileExistsError|NotADirectoryError)"):
        in_spawned_process(os.makedirs, str(blocker / "sub"))
    in_spawned_process(os.makedirs, str(tmp_path / "ok" / "sub"))  # success: no error, the work is done
    assert (tmp_path / "ok" / "sub").is_dir()


def test_eval_heap_reports_each_pass_and_the_live_memory(store_dir, tmp_path):
    """benchmarks/eval_heap.py on a model folder: a row per pass with glibc's heap figures, and the RSS once
    the heap's free memory is returned (what the scale curve's training-memory explanation rests on)."""
    from sctab.bench.heap import main
    from tests.model_folders import write_model_folders

    models = write_model_folders(tmp_path / "models", store_dir)
    out = tmp_path / "heap.md"
    assert main(["--model", str(models / "sctab"), "--store", str(store_dir), "--split", "val", "--passes", "2",
                 "--batch-size", "64", "--out", str(out)]) == 0
    text = out.read_text()
    rows = [ln for ln in text.splitlines() if ln.startswith("| 1 |") or ln.startswith("| 2 |")]
    assert len(rows) == 2 and all("MiB" in r for r in rows)
    assert "Heap free" in text and "malloc_trim" in text and "Split `val`" in text
    with pytest.raises(SystemExit):
        main(["--model", str(models / "sctab")])  # a model folder needs its store
