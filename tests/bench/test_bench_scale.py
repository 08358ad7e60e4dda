"""`make bench-scale` (sctab.bench.scale): the fit and its flags on planted curves, the process-tree memory
sampler on planted process trees, the stages as DVC renders them, and a --quick run end to end."""

from __future__ import annotations

import csv
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from sctab.bench.scale import dag, fit, measure, report, sizes
from sctab.config import load_profile
from tests.paths import REPO_ROOT as REPO

MIB = 2**20

CELLS = np.array([30_000, 120_000, 480_000], float)


def test_linear_stage_is_not_flagged():
    f = fit.fit_stage(CELLS, 5 + 1e-4 * CELLS, 400 * MIB + 50 * CELLS)  # fixed cost + metadata-sized growth
    assert f["flags"] == []
    assert f["time_slope"] < 1.0 and f["bytes_per_cell"] == pytest.approx(50, rel=1e-6)
    assert f["time_marginal_exp"] == pytest.approx(1.0, abs=1e-6)
    assert f["time_per_cell_s"] == pytest.approx(1e-4, rel=1e-6)


def test_quadratic_time_is_flagged():
    f = fit.fit_stage(CELLS, 2 + 1e-9 * CELLS**2, np.full(3, 400.0 * MIB))
    assert f["flags"] == [f"time superlinear (slope {f['time_slope']:.2f})"] and f["time_slope"] > 1.5
    assert f["time_marginal_exp"] == pytest.approx(2.0, abs=0.01)


def test_quadratic_growth_hidden_by_a_fixed_cost_is_caught_by_the_marginal_exponent():
    t = 60 + 1e-9 * CELLS**2  # 61 s, 74 s, 290 s: a log-log slope of ~0.6, but the marginal cost grows as cells
    f = fit.fit_stage(CELLS, t, np.full(3, 400.0 * MIB))
    assert f["time_slope"] < 1 and f["time_marginal_exp"] == pytest.approx(2.0, abs=0.01)
    assert f["flags"] == ["time superlinear (marginal exponent 2.00)"]
    # the same shape within timing noise (the last size adds under MARGINAL_MIN_S seconds) is not flagged
    assert fit.fit_stage(CELLS, 1 + 1e-11 * CELLS**2, np.full(3, 400.0 * MIB))["flags"] == []


def test_memory_growing_per_cell_is_flagged():
    f = fit.fit_stage(CELLS, 1e-4 * CELLS, 300 * MIB + 4 * 1500 * CELLS)  # a dense float32 row per cell
    assert f["flags"] == [f"memory +{6000:,} B/cell"]
    assert f["mem_slope"] > 0.5


def test_extrapolation_scales_the_per_cell_part_by_genes():
    # time = 10 s fixed + 1e-4 s per cell at 1,500 genes, 12.9x per cell at the paper's genes (19,331 / 1,500)
    ratio = sizes.PAPER["n_genes"] / 1500
    f = fit.fit_stage(CELLS, 10 + 1e-4 * CELLS, 500 * MIB + 20 * CELLS)
    point = {"cells": 30_000, "wall_s": 10 + 1e-4 * 30_000 * ratio, "peak_bytes": 500 * MIB + 20 * 30_000}
    ex = fit.extrapolate(f, "extract", point)
    n = sizes.PAPER["cells_in"]
    assert ex["target_cells"] == n
    assert ex["time_gene_ratio"] == pytest.approx(ratio, rel=1e-6) and ex["time_gene_method"] == "per-cell part"
    assert ex["time_full"] == pytest.approx(10 + 1e-4 * n * ratio, rel=1e-6)
    assert ex["mem_gene_ratio"] == pytest.approx(1.0) and ex["mem_full"] == pytest.approx(500 * MIB + 20 * n, rel=1e-6)
    # training-split and sampled stages are carried to their own cell counts
    assert fit.extrapolate(f, "train_sctab", None)["target_cells"] == sizes.PAPER["train_cells"]
    assert fit.extrapolate(f, "train_celltypist", None)["target_cells"] == 1_500_000


def test_sizes_params_and_bad_input():
    assert sizes.Size.parse("x4") == sizes.Size(4.0) and sizes.Size.parse("x1@19331").n_genes == 19331
    assert sizes.Size.parse("x0.5").label == "x0.5" and sizes.Size(1, 19331).label == "x1@19331g"
    for bad in ("4", "x", "x-1", "x2@abc", "x1@10"):
        with pytest.raises(sizes.ScaleError, match="size"):
            sizes.Size.parse(bad)
    tiny = load_profile("tiny")
    p = sizes.size_params(tiny, sizes.Size(4, 19331), {"models.sctab.batch_size": 2048})
    lo, hi = tiny["synthetic"]["cells_per_donor"]
    assert p["synthetic"]["cells_per_donor"] == [4 * lo, 4 * hi] and p["synthetic"]["n_genes"] == 19331
    assert all(p["models"][m]["epochs"] == 1 for m in ("linear", "mlp", "sctab"))
    assert p["models"]["xgboost"]["n_estimators"] == sizes.XGBOOST_ROUNDS
    assert p["models"]["xgboost"]["early_stopping_rounds"] is None
    assert p["ensemble"]["seeds"] == tiny["ensemble"]["seeds"][:1] and len(tiny["ensemble"]["seeds"]) == 5
    assert p["augment"]["n_cells"] >= 10**9 and p["models"]["celltypist"]["n_cells"] >= 10**9
    # CellTypist within a share of this machine's RAM, or the profile's cap when smaller
    assert p["models"]["celltypist"]["max_memory_gib"] == sizes.celltypist_budget_gib(tiny)
    assert sizes.celltypist_budget_gib(tiny, ram_bytes=24 * 2**30) == 9.6
    assert sizes.celltypist_budget_gib(tiny, ram_bytes=128 * 2**30) == tiny["models"]["celltypist"]["max_memory_gib"]
    assert sizes.celltypist_budget_gib({"models": {"celltypist": {}}}, ram_bytes=128 * 2**30) == 51.2
    assert p["models"]["sctab"]["batch_size"] == 2048 and tiny["models"]["sctab"]["batch_size"] != 2048
    with pytest.raises(sizes.ScaleError, match="nosuch"):
        sizes.size_params(tiny, sizes.Size(1), {"nosuch.key": 1})
    with pytest.raises(sizes.ScaleError, match="dotted.key=value"):
        sizes.parse_set(["models.sctab.lr"])
    assert fit.node_ram(REPO / "infra" / "ray" / "cluster.yaml")["gpu_worker (g5.2xlarge)"] == 32 * 2**30


def test_stages_are_rendered_by_dvc_in_dag_order(tmp_path):
    measure.make_workspace(tmp_path, sizes.size_params(load_profile("tiny"), sizes.Size(1)))
    stages = dag.render_stages(tmp_path)
    names = [s.name for s in stages]
    assert names[:2] == ["ontology", "census"] and names[-2:] == ["evaluate", "register"] and len(names) == 16
    assert names.index("tune") < min(names.index(n) for n in names if n.startswith("train_"))
    for s in stages:  # every ${...} substituted, and each stage after the stages making its inputs
        assert "${" not in s.cmd and s.cmd.startswith("python pipelines/"), s.cmd
        for up in dag.upstream(stages)[s.name]:
            assert names.index(up) < names.index(s.name)
    by = {s.name: s.cmd for s in stages}
    assert "--model sctab --ensemble" in by["train_sctab"] and "--augmentations data/augment" in by["train_mlp"]
    assert [s.name for s in dag.with_upstream(stages, ["pca"])] == \
        ["ontology", "census", "extract", "split", "store", "validate", "pca"]
    with pytest.raises(sizes.ScaleError, match="unknown stage"):
        dag.with_upstream(stages, ["trian"])


ALLOC = "import sys, time; b = bytearray(int(sys.argv[1]) * 2**20); b[::4096] = b'x' * len(b[::4096]); time.sleep(1.5)"


def test_memory_of_the_whole_process_tree_is_summed(tmp_path):
    # two children of 150 MiB each under one shell: the tree peaks above 300 MiB, no single process does
    # launched from a large process (as from a long test session): a forked child inherits its parent's
    # high-water mark, which must not pass for the stage's
    py = sys.executable
    ballast = bytearray(400 * MIB)
    ballast[::4096] = b"x" * len(ballast[::4096])
    cmd = f"'{py}' -c \"{ALLOC}\" 150 & '{py}' -c \"{ALLOC}\" 150 & wait"
    res = measure.run_measured(cmd, tmp_path, None, tmp_path / "log", interval=0.1)
    del ballast
    assert res["returncode"] == 0
    assert res["peak_rss_bytes"] > 300 * MIB and res["peak_single_bytes"] < 250 * MIB
    assert res["peak_pss_bytes"] > 300 * MIB  # private memory: the same in both sums
    assert res["peak_procs"] >= 3


SHARED = ("import mmap, os, time; m = mmap.mmap(-1, 200 * 2**20); m[::4096] = b'x' * len(m[::4096]); "
          "pid = os.fork(); t = m[::4096]; time.sleep(1.5); pid and os.waitpid(pid, 0)")


def test_pages_shared_between_processes_count_once_in_the_summed_pss(tmp_path):
    # 200 MiB of shared memory touched by a process and its forked child (as Ray's workers share its object
    # store and libraries): the RSS sum counts it twice, the PSS sum once, and the fits use the PSS sum
    res = measure.run_measured(f"'{sys.executable}' -c \"{SHARED}\"", tmp_path, None, tmp_path / "log", interval=0.1)
    assert res["returncode"] == 0
    assert res["peak_rss_bytes"] > 380 * MIB
    assert 190 * MIB < res["peak_pss_bytes"] < 300 * MIB


def test_processes_that_left_the_tree_are_found_by_the_marker(tmp_path):
    # a daemon re-parented away from the stage (double fork), naming the marker on its command line
    marker = str(tmp_path / "raytmp")
    daemon = f"import time; time.sleep(30)  # {marker}"
    script = tmp_path / "stage.sh"
    script.write_text(textwrap.dedent(f"""\
        ( '{sys.executable}' -c '{daemon}' & )
        sleep 1.5
    """))
    res = measure.run_measured(f"sh {script}", tmp_path, None, tmp_path / "log", marker=marker, interval=0.1)
    assert res["returncode"] == 0 and res["procs_by_marker"] == 1
    assert measure.stop_leftovers(marker, wait_s=0.5) == 1 and measure._leftovers(marker) == []


def test_a_failing_stage_names_itself(tmp_path, monkeypatch):
    monkeypatch.setattr(measure, "render_stages",
                        lambda ws: [dag.Stage("boom", "echo kaputt >&2; exit 3", (), ())])
    with pytest.raises(sizes.ScaleError, match=r"stage boom failed at size x1 \(exit 3[\s\S]*kaputt"):
        measure.run_size(sizes.Size(1), load_profile("tiny"), {}, None, tmp_path, echo=lambda m: None)


@pytest.mark.slow  # ~2 minutes on 2 cores: seven stages (train_linear starts a local Ray) at two tiny sizes
def test_quick_scale_run_writes_a_row_per_stage_and_size(tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    r = subprocess.run([sys.executable, str(REPO / "benchmarks" / "scale.py"), "--quick", "--out", str(out),
                        "--workdir", str(work), "--keep"], capture_output=True, text=True, cwd=REPO, timeout=400)
    assert r.returncode == 0, r.stderr[-3000:]
    [md] = out.glob("scale-*.md")
    assert md.with_suffix(".png").stat().st_size > 10_000
    rows = list(csv.DictReader(open(md.with_suffix(".csv"))))
    stages = ["ontology", "census", "extract", "split", "store", "validate", "augment", "pca", "tune", "train_linear"]
    quick = sizes.QUICK_SIZES.split(",")
    assert [(x["size"], x["stage"]) for x in rows] == [(s, st) for s in quick for st in stages]
    for x in rows:
        assert float(x["wall_s"]) > 0 and float(x["peak_rss_mib"]) > 0 and int(x["cells_in"]) > 0, x
        assert x["n_genes"] == "400"
    small, big = (int(next(x for x in rows if x["size"] == s)["cells_in"]) for s in quick)
    assert 1.6 < big / small < 2.4
    ray = [x for x in rows if x["stage"] == "train_linear"]
    # the Ray daemons and workers are counted: many processes, the tree well above its largest process
    assert all(int(x["peak_procs"]) > 5 and float(x["peak_rss_mib"]) > 1.5 * float(x["peak_single_mib"]) for x in ray)
    # their shared pages (libraries, object store) count once in the PSS sum, which the fits use
    assert all(float(x["peak_single_mib"]) <= float(x["peak_pss_mib"]) < float(x["peak_rss_mib"]) for x in ray)
    text = md.read_text()
    assert text.strip() in r.stdout
    for part in ("Command: `benchmarks/scale.py --quick", "commit ", "Load average (1, 5, 15 min)", "wall time",
                 "| Size | Genes | Cells in | Training cells |", "| train_linear | train |", "Fits a 32.0 GiB node"):
        assert part in text, part
    assert sum(ln.startswith("| ") and " B/cell |" in ln for ln in text.splitlines()) == len(stages)
    # MLflow tracked into the workspace, not the repository's mlruns/
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{work / quick[0] / 'mlruns' / 'mlflow.db'}")
    assert client.search_runs([e.experiment_id for e in client.search_experiments()])


def test_sizes_in_cells_parse_and_label():
    assert sizes.Size.parse("c500k") == sizes.Size(1.0, None, 500_000) and sizes.Size.parse("c500k").label == "c500k"
    assert sizes.Size.parse("c0.1m").cells == 100_000 and sizes.Size.parse("c12345").label == "c12345"
    assert sizes.Size.parse("c50k@19331").n_genes == 19331
    from sctab.census.synthetic import SyntheticCensusConfig, expected_cells

    prof = load_profile("scale")
    for n in (50_000, 500_000):  # the same sizing rule as `sctab params --cells`
        syn = sizes.size_params(prof, sizes.Size.parse(f"c{n // 1000}k"))["synthetic"]
        assert expected_cells(SyntheticCensusConfig(**syn)) == pytest.approx(n, rel=0.05)
        assert syn["n_genes"] == 19_331
    for bad in ("c", "c12", "cabc", "c-5k"):
        with pytest.raises(sizes.ScaleError, match="size"):
            sizes.Size.parse(bad)


def test_output_bytes_count_files_once_and_not_through_links(tmp_path):
    (tmp_path / "out" / "sub").mkdir(parents=True)
    (tmp_path / "out" / "a.bin").write_bytes(b"x" * 1000)
    (tmp_path / "out" / "sub" / "b.bin").write_bytes(b"y" * 24)
    (tmp_path / "out" / "link").symlink_to(tmp_path / "out" / "a.bin")
    assert measure.tree_bytes(tmp_path / "out") == 1024
    assert measure.tree_bytes(tmp_path / "out" / "a.bin") == 1000 and measure.tree_bytes(tmp_path / "missing") == 0


def _fit(stage, intercept, per_cell, time_s=100.0, slope=1.0, marginal=1.0):
    n = fit.target_cells(stage)
    return {"stage": stage, "mem_intercept_bytes": intercept, "bytes_per_cell": per_cell, "time_intercept_s": 10.0,
            "time_full": time_s, "mem_full": intercept + per_cell * n, "target_cells": n, "time_slope": slope,
            "time_marginal_exp": marginal}


def test_deployments_split_a_ray_stage_over_workers_and_refuse_a_node_stage_that_outgrows_a_node():
    rates = {"train": 100_000.0, "infer": 300_000.0, "source": "x", "device": "H100"}
    xgb = _fit("train_xgboost", 2 * 2**30, 7_000)          # ~101 GiB at 15.2 M cells: several 32 GiB workers
    store = _fit("store", 1 * 2**30, 2_000)                 # ~42 GiB at 22.2 M: no single 32 GiB node holds it
    sctab = _fit("train_sctab", 3 * 2**30, 50)
    pca = _fit("pca", 4 * 2**30, 0.0, time_s=16_000)
    d = {r["stage"]: r for r in fit.deployments([xgb, store, sctab, pca], local_cores=2, rates=rates)}
    room = fit.NODE_B["ram_bytes"] * fit.RAM_USABLE
    assert d["train_xgboost"]["workers_b"] >= 4 and d["train_xgboost"]["mem_b"] <= room and d["train_xgboost"]["fits_b"]
    assert d["train_xgboost"]["fits_a"]                     # 101 GiB < 80 % of 128 GiB
    assert not d["store"]["fits_b"] and d["store"]["workers_b"] is None and d["store"]["fits_a"]
    n = sizes.PAPER["train_cells"]
    assert d["train_sctab"]["time_a"] == pytest.approx(10 + n / 100_000 + 0.15 * sizes.PAPER["cells_in"] / 300_000)
    assert d["pca"]["time_a"] == pytest.approx(16_000 * 2 / 16) and d["pca"]["how_a"] == "x 2/16 cores"
    assert d["store"]["time_a"] == d["store"]["time_b"] == 100.0   # one process: no speed-up claimed


def test_celltypist_sizes_its_sample_to_each_node_and_is_fitted_on_the_cells_it_used(tmp_path):
    # 40 KB per sampled cell: 1.5 M cells (~56 GiB) fit 80 % of (a)'s 128 GiB, not (b)'s 32 GiB node
    ct = {**_fit("train_celltypist", 1 * 2**30, 40_000), "time_per_cell_s": 1e-3}
    d = fit.deployments([ct], local_cores=2, rates=None)[0]
    room_b = fit.NODE_B["ram_bytes"] * fit.RAM_USABLE
    assert d["sample_a"] == 1_500_000 and d["fits_a"] and d["mem_a"] == pytest.approx(2**30 + 40_000 * 1_500_000)
    assert d["sample_b"] == pytest.approx((room_b - 2**30) / 40_000) and d["mem_b"] == pytest.approx(room_b)
    assert d["fits_b"] and "M cells" in d["how_b"] and d["sample_b"] < d["sample_a"]
    assert d["time_a"] == pytest.approx((10 + 1e-3 * 1_500_000) * 2 / 16)
    assert dag.basis("train_celltypist") == "sample" and dag.basis("augment") == "train"
    # the fit reads the cells the CellTypist fit used (its report's train_cells), not the training split
    (tmp_path / "reports" / "train").mkdir(parents=True)
    (tmp_path / "reports" / "train" / "celltypist.json").write_text('{"train_cells": 1234}')
    assert measure.counts(tmp_path)["celltypist_cells"] == 1234
    rows = [{"stage": "train_celltypist", "n_genes": 19_331, "cells_in": 10 * c, "train_cells": 7 * c,
             "celltypist_cells": c, "wall_s": 1.0 + c / 1000, "peak_pss_bytes": 2**30 + 40_000 * c}
            for c in (1_000, 2_000, 4_000)]
    f = fit.fits(rows, 19_331)[0]
    assert f["bytes_per_cell"] == pytest.approx(40_000) and f["max_cells"] == 4_000


def test_targets_flag_memory_beyond_metadata_and_superlinear_time():
    assert fit.targets_met(_fit("extract", 1e9, 250)) == (True, True)
    assert fit.targets_met(_fit("extract", 1e9, 2_000)) == (False, True)
    assert fit.targets_met(_fit("train_xgboost", 1e9, 7_000)) == (True, True)   # judged per worker on (b)
    assert fit.targets_met(_fit("pca", 1e9, 0, marginal=1.3)) == (True, False)
    assert fit.targets_met(_fit("pca", 1e9, 0, slope=0.2, marginal=float("nan"))) == (True, True)


def test_output_bytes_per_cell_leave_a_fixed_output_out():
    def row(size, cells, census_bytes):
        outs = {"data/ontology/cl.obo": 1_000_000, "data/census": census_bytes}
        return [{"size": size, "stage": st, "n_genes": 19_331, "cells_in": cells, "train_cells": None, "wall_s": 1.0,
                 "peak_pss_bytes": MIB, "peak_rss_bytes": MIB, "outs": {o: outs[o]}, "out_bytes": outs[o]}
                for st, o in (("ontology", "data/ontology/cl.obo"), ("census", "data/census"))]

    rows = row("c10k", 10_000, 30_000_000) + row("c20k", 20_000, 60_000_000)
    header = {"started": "now", "quick": False, "run": "Command: `x`; commit c; wall time 1.0 min", "machine": "m",
              "load": "load average 0 at the start, 0 at the end", "profile": "scale", "overrides": "",
              "interval": 0.2}
    text = report.markdown(rows, [], header, {})
    lines = {ln.split("|")[2].strip(): ln for ln in text.splitlines() if ln.startswith("| ontology |")
             or ln.startswith("| census |") and "`" in ln}
    assert "| 0 | 1 MiB |" in lines["`data/ontology/cl.obo`"]          # fixed: nothing per cell
    assert "| 3,000 | 62.0 GiB |" in lines["`data/census`"]            # 3,000 B/cell x 22.2 M
