"""`make bench` / benchmarks/run.py: run every registered case (ours and its baseline, each in its own
subprocess for an honest peak RSS), print one markdown table and write it to benchmarks/results/<date>.md.

Every row comes from the one invocation that writes the file, with the repeats the row states; the ratio is
ours / baseline from the same invocation, so machine load affects both. The header records what a reader
needs to judge the figures: the command, the git commit, the machine, the load average before and after,
and the run's wall time. Model rows run on weights of a short training run (fixtures.trained_states) and carry
the exactness criterion of exactness.exactness; a row whose check fails does not meet its target.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from sctab.allocator import keep_freed_memory
from sctab.bench.cases import REGISTRY
from sctab.bench.checks import bounded, check_text, info_text, not_checks, passed
from sctab.bench.exactness import EXACT_FACTOR
from sctab.bench.fixtures import Config
from sctab.bench.roofline import higher, measure_peaks, roofline_rows, roofline_table
from sctab.bench.synthetic import make_store, store_stats
from sctab.provenance import RunRecord, allocator_text, machine_text

#: `--help`'s description
DESCRIPTION = ("Loader and scTab throughput against in-run baselines (issue 7): prints a markdown table "
               "(medians over repeats, baseline, ratio, target, peak RSS) and writes it to "
               "benchmarks/results/<date>.md. Synthetic 10x-like stores are built once under --cache.")

REPO = Path(__file__).resolve().parents[3]
MERLIN_PY = REPO / ".venv-merlin" / "bin" / "python"


def _child(case: str, part: str, cfg: Config, out: Path) -> None:
    """Inside the subprocess: run one part, add its peak RSS, write JSON."""
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    # ours and the baseline alike run with the allocator setting of every sctab entry point that trains or
    # predicts (train workers, evaluate, annotate, serving): freed blocks kept for reuse
    kept = keep_freed_memory()
    res = REGISTRY[case].run(part, cfg)
    res["allocator"] = "kept" if kept else "system"
    # a part may name its own peak (what it measures, before its checks); else the process's high-water mark
    res.setdefault("peak_rss_mib", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    out.write_text(json.dumps(res))


def _run_part(case: str, part: str, cfg: Config, python: str, timeout_s: float = 1800.0) -> dict:
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "res.json"
        cmd = [python, "-m", "sctab.bench.runner", "--_child", case, part, str(out),
               "--_config", json.dumps(asdict(cfg))]
        env = {**os.environ, "PYTHONPATH": str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=timeout_s)
        except subprocess.TimeoutExpired:  # a hung part (merlin's loader once deadlocked) must not stall the run
            return {"error": f"{part} did not finish within {timeout_s:.0f} s (stopped)"}
        if r.returncode != 0 or not out.exists():
            tail = (r.stderr or r.stdout).strip().splitlines()[-1:] or ["no output"]
            return {"error": f"{part} failed: {tail[0][:200]}"}
        return json.loads(out.read_text())


def build_merlin_env() -> str | None:
    """Make .venv-merlin with `make merlin-env` when it is missing; None when it is there, else why not."""
    if MERLIN_PY.exists():
        return None
    print("building .venv-merlin (`make merlin-env`) for the merlin row ...", file=sys.stderr, flush=True)
    try:
        r = subprocess.run(["make", "merlin-env"], cwd=REPO, capture_output=True, text=True, timeout=3600)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"`make merlin-env` could not run: {e}"
    if r.returncode != 0 or not MERLIN_PY.exists():
        tail = [ln for ln in (r.stderr or r.stdout).splitlines() if ln.strip() and "WARNING" not in ln][-1:]
        return f"`make merlin-env` failed (exit {r.returncode}): {(tail or ['no output'])[0][:200]}"
    return None


def run_case(name: str, cfg: Config) -> dict:
    case = REGISTRY[name]
    row = {"name": name, "figure": case.figure, "target": case.target, "baseline_name": case.baseline,
           "note": case.note, "min_ratio": case.min_ratio}
    if case.run is None:
        row["status"] = "not run"
        return row
    python = sys.executable
    if name == "loader_merlin":
        why = build_merlin_env()
        if why:
            row["status"] = "not run"
            row["note"] = why
            return row
        python = str(MERLIN_PY)
    base_python = sys.executable
    if case.baseline_venv:
        base_python = str(REPO / case.baseline_venv / "bin" / "python")
        if not Path(base_python).exists():  # an optional environment: the row says so, it is not a failure
            row["status"] = "skipped"
            row["note"] = f"skipped: {case.baseline_venv}/ is absent ({case.note})"
            return row
    limit = 600.0 if name == "loader_merlin" else 1800.0
    ours = _run_part(name, "ours", cfg, python, limit)
    base = _run_part(name, "baseline", cfg, base_python, limit)
    row.update(ours=ours, baseline=base)
    if "error" in ours or "error" in base:
        row["status"] = "error"
        row["note"] = "; ".join(r["error"] for r in (ours, base) if "error" in r)
        return row
    return judge(row, case, cfg)


def on_accelerator(case, cfg: Config) -> bool:
    """A device row whose ours ran off the CPU: its process CPU time does not measure it (the GPU's work is
    not the process's CPU time), so its CPU-time rate is neither shown nor judged."""
    return bool(case.device_row) and not str(cfg.device).startswith("cpu")


def judge(row: dict, case, cfg: Config) -> dict:
    """The measured row's figures, checks and verdicts (``row`` has ``ours`` and ``baseline`` results).

    Every entry of ours' ``check`` must be a check (a bool, or a value with its bound:
    sctab.bench.checks.bounded); a bare float or text there makes the row an error naming it."""
    ours, base = row["ours"], row["baseline"]
    if base.get("check") or base.get("info"):  # a baseline that checks itself (a loader anchor): judged too
        ours["check"] = {**ours.get("check", {}), **{f"baseline: {k}": v for k, v in base.get("check", {}).items()}}
        ours["info"] = {**ours.get("info", {}), **{f"baseline: {k}": v for k, v in base.get("info", {}).items()}}
    bad = not_checks(ours.get("check", {}))
    if bad:
        row["status"] = "error"
        row["note"] = (f"ours reported {', '.join(bad)} as a check without a bound: a check is a bool or "
                       "bounded(value, bound) (sctab.bench.checks)")
        return row
    row["median"] = float(np.median(ours["samples"]))
    row["baseline_median"] = float(np.median(base["samples"]))
    row["ratio"] = row["median"] / row["baseline_median"]
    gpu = on_accelerator(case, cfg)
    row["cpu_rate_applies"] = not gpu
    row["cpu_median"] = np.nan if gpu else float(np.median(ours.get("cpu_samples") or [np.nan]))
    row["baseline_cpu_median"] = float(np.median(base.get("cpu_samples") or [np.nan]))
    if case.max_rss_mib is not None:
        ours["check"] = {**ours.get("check", {}),
                         f"peak RSS (MiB, < {case.max_rss_mib:,.0f})": bounded(ours["peak_rss_mib"],
                                                                                case.max_rss_mib)}
    checks_ok = passed(ours.get("check", {}))
    row["checks_ok"] = checks_ok
    row["min_ratio"] = case.min_ratio
    if case.target is None and case.min_ratio is None:
        row["met"] = row["met_cpu"] = None
    else:
        ratio_ok = case.min_ratio is None or row["ratio"] >= case.min_ratio
        row["met"] = bool((case.target is None or row["median"] >= case.target) and ratio_ok and checks_ok)
        if gpu:
            row["met_cpu"] = None
        else:
            cpu_ratio = row["cpu_median"] / row["baseline_cpu_median"]
            cpu_ratio_ok = case.min_ratio is None or cpu_ratio >= case.min_ratio
            row["met_cpu"] = bool((case.target is None or row["cpu_median"] >= case.target) and cpu_ratio_ok
                                  and checks_ok)
    row["status"] = "ok"
    return row


def _fmt(v: float) -> str:
    return f"{v:,.0f}" if v >= 100 else f"{v:,.2f}"


def _ratio(v: float) -> str:
    return f"{v:.1f}x" if v >= 0.1 else f"{v:.2g}x"  # a slower baseline-beater still shows its size


def _checks_cell(o: dict) -> str:
    """Checks (judged) first, then what the row only reports, marked as such."""
    check, info = o.get("check", {}), o.get("info", {})
    parts = [check_text(check) if check else "no check"]
    if info:
        parts.append(f"reported, not judged: {info_text(info)}")
    return "; ".join(parts).replace("|", "\\|")  # |p - p_f64| inside a markdown table cell


def target_text(r: dict) -> str:
    """A row's target: a rate, a ratio to its same-run baseline, both or none."""
    parts = [] if r.get("target") is None else [f">= {_fmt(r['target'])}"]
    if r.get("min_ratio") is not None:
        parts.append(f">= {r['min_ratio']:g}x baseline")
    return " and ".join(parts) or "-"


def table(rows: list[dict], cfg: Config, header: str = "") -> str:
    lines = [header] if header else []
    lines += ["| Figure | Ours, wall (median, min-max) | Ours, CPU-time rate | Baseline, same run: wall (CPU-time) "
              "| Ratio (wall) | Target | Met: wall / CPU-time | Peak RSS ours / baseline | Check / note |",
              "|---|---|---|---|---|---|---|---|---|"]
    yn = {None: "-", True: "yes", False: "**no**"}
    for r in rows:
        target = target_text(r)
        if r["status"] != "ok":
            lines.append(f"| {r['figure']} | {r['status']} | - | {r['baseline_name'] or '-'} | - | {target} | "
                         f"{r['status'] if r['status'] in ('not run', 'skipped') else 'error'} | - | {r['note']} |")
            continue
        o, b = r["ours"], r["baseline"]
        spread = f" ({_fmt(min(o['samples']))}-{_fmt(max(o['samples']))}), {len(o['samples'])} repeats"
        if r.get("cpu_rate_applies", True) is False:
            cpu = "n/a (GPU row: the process's CPU time does not measure it)"
        else:
            cpu = "-" if np.isnan(r.get("cpu_median", np.nan)) else f"{_fmt(r['cpu_median'])}"
        bcpu = "" if np.isnan(r.get("baseline_cpu_median", np.nan)) else f" ({_fmt(r['baseline_cpu_median'])})"
        lines.append(
            f"| {r['figure']}<br>*{o['label']}* | {_fmt(r['median'])} {o['unit']}{spread} | {cpu} | "
            f"{_fmt(r['baseline_median'])}{bcpu}, {len(b['samples'])} repeats<br>*{b['label']}* | "
            f"{_ratio(r['ratio'])} | {target} | "
            f"{yn[r['met']]} / {yn.get(r.get('met_cpu'), '-')} | "
            f"{o['peak_rss_mib']:,.0f} / {b['peak_rss_mib']:,.0f} MiB | "
            f"{'; '.join(x for x in (_checks_cell(o), r['note']) if x)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="benchmarks/run.py", description=DESCRIPTION)
    p.add_argument("--quick", action="store_true", help="tiny shapes and few repeats: a smoke run in seconds")
    p.add_argument("--cases", nargs="*", default=None, help=f"subset of cases (default all: {', '.join(REGISTRY)})")
    p.add_argument("--repeats", type=int, default=None, help="repeats per figure (default 5, quick 3; the annotate "
                   "row 3, each annotates every cell): sets every row's")
    p.add_argument("--cache", default=str(REPO / "benchmarks" / ".cache"),
                   help="synthetic store cache (default: %(default)s)")
    p.add_argument("--out", default=None, help="result file (default benchmarks/results/<YYYY-MM-DD-HHMM>.md, "
                   "its rows also as .json beside it for `make bench-summary`; '-' = do not write; quick runs "
                   "write nothing unless given)")
    p.add_argument("--device", default=None, help="also run the device rows (loader to device, training step, "
                   "inference, annotate) on this device: cuda (auto, or cpu to smoke them); default: CPU rows only")
    p.add_argument("--_child", nargs=3, help=argparse.SUPPRESS)
    p.add_argument("--_config", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a._child:
        _child(a._child[0], a._child[1], Config(**json.loads(a._config)), Path(a._child[2]))
        return 0
    cfg = Config.quick(a.cache) if a.quick else Config(cache=a.cache)
    if a.repeats:
        cfg.repeats = cfg.annotate_repeats = a.repeats
    where = "no GPU"
    if a.device:
        from sctab.models.device import device_name, resolve_device

        try:
            dev = resolve_device(a.device)
        except ValueError as e:
            p.error(str(e))
        cfg.device = str(dev)
        if dev.type == "cuda":
            where = f"GPU {device_name(dev)} (torch CUDA {torch.version.cuda}), device rows on {dev}"
        else:
            where = "no GPU, device rows on the CPU"
    names = a.cases or [n for n, c in REGISTRY.items() if a.device or not c.device_row]
    unknown = [n for n in names if n not in REGISTRY]
    if unknown:
        p.error(f"unknown case(s) {unknown}; known: {', '.join(REGISTRY)}")
    print(f"store: {cfg.store_path} (built once, then reused)", file=sys.stderr, flush=True)
    make_store(cfg.store_path, cfg.n_cells, cfg.n_genes, cfg.n_classes, row_group_size=cfg.row_group_size)
    stats = store_stats(cfg.store_path)
    print("measuring the roofline (GEMM, triad) ...", file=sys.stderr, flush=True)
    peaks0 = measure_peaks(when="before the rows")  # again after them; the higher ceiling is kept (roofline.py)
    run = RunRecord.start("benchmarks/run.py", argv, root=REPO)
    rows = []
    for n in names:
        print(f"running {n} ...", file=sys.stderr, flush=True)
        rows.append(run_case(n, cfg))
    header = (f"## scTab bench, {run.started:%Y-%m-%d %H:%M}{' (quick)' if a.quick else ''}\n\n"
              f"{run.command_text(via='bench')}; {len(rows)} rows, all from this invocation.\n\n"
              f"Machine: {machine_text()}, {where}. {run.load_summary().capitalize()}: the machine may be shared, "
              f"so next to the wall-clock rate each figure has a CPU-time rate, items / (process CPU s / "
              f"{os.cpu_count()} cores), the rate had the cores been ours; 'Met' is given for both. Allocator: "
              f"{allocator_text()}.\n\n"
              f"Store: {cfg.n_cells:,} synthetic cells x "
              f"{cfg.n_genes:,} genes, {cfg.n_classes} classes, {stats['density']:.1%} non-zero "
              f"({stats['nnz'] / stats['cells']:,.0f} genes per cell), row groups of {cfg.row_group_size}, "
              f"shuffle blocks of {cfg.block_row_groups} row groups; batch {cfg.batch_size}; TabNet n_d {cfg.n_d}, "
              f"n_a {cfg.n_a}, weights of a {cfg.train_steps}-step training run on this store (batch "
              f"{cfg.train_batch}, lr {cfg.train_lr}; members 1-{cfg.members - 1} of the annotate ensemble "
              f"{cfg.member_steps} steps further each), cached. Figures: median (min-max) of the repeats each row "
              f"states. Exact: ours at most {EXACT_FACTOR:g}x as far from a float64 run of the reference TabNet "
              f"(sctab.models.reference_tabnet, no code shared with ours) as its float32 run is (the check on one "
              f"thread, where float32's summation order does not depend on the load), and the reference's class on "
              f"every cell but ties within that bound. Every check is pass/fail with its bound; a row that "
              f"fails one does not meet its target. A GPU row has no "
              f"CPU-time rate.\n")
    text = table(rows, cfg, header)
    if any((r.get("ours") or {}).get("work") for r in rows if r.get("status") == "ok"):
        print("measuring the roofline again (GEMM, triad) ...", file=sys.stderr, flush=True)
        peaks = higher(peaks0, measure_peaks(when="after the rows"))
        text += "\n\n" + roofline_table(rows, peaks)
    else:
        peaks = None
    print(text)
    dated = str(REPO / "benchmarks" / "results" / f"{run.started:%Y-%m-%d-%H%M}.md")
    out = a.out if a.out is not None else (None if a.quick else dated)
    if out and out != "-":
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text + "\n")
        record = {**run.as_dict(), "cores": os.cpu_count(), "where": where, "quick": a.quick,
                  "config": asdict(cfg), "rows": rows, "roofline": None if peaks is None else
                  {"peaks": asdict(peaks), "rows": roofline_rows(rows, peaks)}}
        Path(out).with_suffix(".json").write_text(json.dumps(record, indent=1, default=float))
        print(f"wrote {out} and {Path(out).with_suffix('.json').name}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
