"""`make bench-summary`: the table of several `make bench` runs (issue 15: a target is met only if the median of
three runs at different hours meets it).

It reads the ``.json`` record each run writes beside its results file and writes one markdown table: per row the
median, minimum and maximum of the runs' own medians, the median ratio to each run's same-run baseline, the
target, and whether it is met. Met means: the median over runs meets the rate target, the median ratio meets the
ratio target, and the row's checks (exactness, peak RSS) passed in every run. Nothing is typed in by hand: every
figure comes from the run records named in the file's header.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path

import numpy as np

from sctab.bench.runner import REPO, _fmt, _ratio, target_text

#: `--help`'s description
DESCRIPTION = ("Summarise several `make bench` runs (their .json records) into one table: median, min and "
               "max of the runs' medians per row, the median ratio to the same-run baseline, target and met (the "
               "median over runs meets the target and every run's checks passed).")

RESULTS = REPO / "benchmarks" / "results"


#: what the runner (sctab.bench.runner.main) writes at the head of every run record: the command that made the
#: run, the commit it ran, when it started, its wall time and the load average at its start and end
HEADER = ("command", "commit", "started", "wall_s", "load_start", "load_end")
#: the first lines of the runner's markdown table (a .md named instead of its .json must carry them)
MD_HEADER = {"title": "## scTab bench, ", "command": "Command: `", "commit": "; commit "}


def _md_record(p: Path) -> Path:
    """The .json record beside a results .md that carries the runner's header; else a clear refusal."""
    try:
        head = "\n".join(p.read_text().splitlines()[:4])
    except OSError as e:
        raise SystemExit(f"bench-summary: cannot read {p}: {e}") from e
    missing = [k for k, mark in MD_HEADER.items() if mark not in head]
    if missing:
        raise SystemExit(f"bench-summary: {p} has no `make bench` header (missing: {', '.join(missing)}); a "
                         "results file edited or written by hand is not a run record")
    rec = p.with_suffix(".json")
    if not rec.exists():
        raise SystemExit(f"bench-summary: {p} has no run record beside it ({rec.name} is missing)")
    return rec


def load_runs(paths: list[Path]) -> list[dict]:
    """The run records at ``paths`` (a results .md stands for the .json beside it). A file without the runner's
    header (HEADER) or rows is refused, naming the file and what it lacks."""
    runs = []
    for p in paths:
        p = Path(p)
        if p.suffix == ".md":
            p = _md_record(p)
        try:
            rec = json.loads(p.read_text())
        except (OSError, ValueError) as e:
            raise SystemExit(f"bench-summary: cannot read run record {p}: {e}") from e
        if not isinstance(rec, dict):
            raise SystemExit(f"bench-summary: {p} is not a `make bench` run record (not a JSON object)")
        missing = [k for k in (*HEADER, "rows") if rec.get(k) in (None, "")]
        if missing:
            raise SystemExit(f"bench-summary: {p} has no `make bench` header (missing: {', '.join(missing)}); "
                             "only a record the runner wrote, with the command and commit that made it, counts")
        rec["path"] = str(p)
        runs.append(rec)
    return sorted(runs, key=lambda r: r["started"])


def latest_runs(n: int, folder: Path = RESULTS) -> list[Path]:
    """The n newest full (not --quick) run records in ``folder``."""
    recs = []
    for p in sorted(folder.glob("*.json")):
        try:
            rec = json.loads(p.read_text())
        except ValueError:
            continue
        if "rows" in rec and not rec.get("quick"):
            recs.append((rec["started"], p))
    return [p for _, p in sorted(recs)[-n:]]


def summarise(runs: list[dict]) -> list[dict]:
    """One dict per bench row over the runs (in the order of the first run's rows)."""
    names = []
    for r in runs:
        names += [row["name"] for row in r["rows"] if row["name"] not in names]
    out = []
    for name in names:
        rows = [next((row for row in r["rows"] if row["name"] == name), None) for r in runs]
        ok = [row for row in rows if row is not None and row.get("status") == "ok"]
        first = next(row for row in rows if row is not None)
        s = {"name": name, "figure": first["figure"], "target": first.get("target"),
             "min_ratio": first.get("min_ratio"), "runs": len(ok), "of": len(runs),
             "unit": ok[0]["ours"]["unit"] if ok else ""}
        if ok:
            med = np.array([row["median"] for row in ok])
            ratio = np.array([row["ratio"] for row in ok])
            s.update(median=float(np.median(med)), min=float(med.min()), max=float(med.max()),
                     run_medians=med.tolist(), ratio=float(np.median(ratio)),
                     baseline=float(np.median([row["baseline_median"] for row in ok])),
                     checks_ok=all(row.get("checks_ok", True) for row in ok))
            if s["target"] is None and s["min_ratio"] is None:
                s["met"] = None
            else:
                s["met"] = bool(len(ok) == len(runs) and s["checks_ok"]
                                and (s["target"] is None or s["median"] >= s["target"])
                                and (s["min_ratio"] is None or s["ratio"] >= s["min_ratio"]))
        else:
            skipped = all(row is None or row.get("status") == "skipped" for row in rows)  # optional venv absent
            s.update(median=None, met=None if skipped or (s["target"] is None and s["min_ratio"] is None) else False,
                     note="; ".join(sorted({str(row.get("note", "")) for row in rows if row})))
        out.append(s)
    return out


def render(runs: list[dict], summary: list[dict], command: str) -> str:
    hours = [r["started"][11:13] for r in runs]
    commits = sorted({r["commit"] for r in runs})
    lines = [f"## scTab bench over {len(runs)} runs, {dt.date.today().isoformat()}", "",
             f"Written by `{command}` from the run records below (each written by `make bench` itself); "
             f"every figure is a statistic of the runs' own medians.", ""]
    lines += ["| Run | Started | Commit | Wall time | Load average at start / end |", "|---|---|---|---|---|"]
    for r in runs:
        lines.append(f"| `{Path(r['path']).name}` | {r['started'].replace('T', ' ')} | {r['commit']} | "
                     f"{r['wall_s'] / 60:.1f} min | {', '.join(f'{v:.1f}' for v in r['load_start'])} / "
                     f"{', '.join(f'{v:.1f}' for v in r['load_end'])} |")
    lines.append("")
    if len(set(hours)) < len(hours):
        lines.append(f"**Note:** not every run started in a different hour ({', '.join(hours)}).\n")
    if len(commits) > 1:
        lines.append(f"**Note:** the runs are of different commits ({', '.join(commits)}).\n")
    lines += ["| Figure | Median of the runs' medians | Min-max of the runs' medians | Each run's median | "
              "Baseline (median) | Ratio (median) | Target | Met (median of runs, checks in every run) |",
              "|---|---|---|---|---|---|---|---|"]
    yn = {None: "-", True: "yes", False: "**no**"}
    for s in summary:
        if s["median"] is None:
            lines.append(f"| {s['figure']} | not run ({s.get('note', '')}) | - | - | - | - | {target_text(s)} | "
                         f"{yn[s['met']]} |")
            continue
        each = " / ".join(_fmt(v) for v in s["run_medians"])
        checks = "" if s["checks_ok"] else " (a check failed)"
        lines.append(f"| {s['figure']} | {_fmt(s['median'])} {s['unit']} | {_fmt(s['min'])}-{_fmt(s['max'])} | "
                     f"{each} | {_fmt(s['baseline'])} | {_ratio(s['ratio'])} | {target_text(s)} | "
                     f"{yn[s['met']]}{checks} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="benchmarks/summarize.py", description=DESCRIPTION)
    p.add_argument("runs", nargs="*", type=Path, help="run records (.json beside each results file); default: "
                   "the --last newest full runs in benchmarks/results")
    p.add_argument("--last", type=int, default=3, help="how many newest runs when none are named (default 3)")
    p.add_argument("--out", default=None, help="markdown file (default benchmarks/results/summary-<date>.md; "
                   "'-' = print only)")
    a = p.parse_args(argv)
    paths = a.runs or latest_runs(a.last)
    if not paths:
        p.error("no run records found in benchmarks/results (run `make bench` first)")
    runs = load_runs(paths)
    cmd = "benchmarks/summarize.py " + " ".join(Path(x).name for x in paths)
    text = render(runs, summarise(runs), cmd)
    print(text)
    out = a.out or str(RESULTS / f"summary-{dt.date.today().isoformat()}.md")
    if out != "-":
        Path(out).write_text(text)
        print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
