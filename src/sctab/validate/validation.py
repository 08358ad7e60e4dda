"""Run every suite, write summary.json and Data Docs, and fail loudly with plain-words reasons."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Mapping

import pandas as pd

from sctab.io import atomic_dir, write_json
from sctab.params_schema import section
from sctab.validate import frames
from sctab.validate.context import build_docs, make_context, run_suite
from sctab.validate.messages import exception_text
from sctab.validate.stats import split_row_stats
from sctab.validate.suites import SuiteSpec, extract_suite, filters_suite, split_suites, store_layout, store_suite


class ValidationError(Exception):
    """Some data check failed. ``failures`` lists each problem in plain words; ``summary`` is what
    was written to summary.json (written, with the Data Docs, before this is raised)."""

    def __init__(self, failures: list[str], summary: dict | None = None, out_dir: str | Path | None = None):
        self.failures = list(failures)
        self.summary = summary
        self.out_dir = Path(out_dir) if out_dir is not None else None
        lines = [f"data validation failed ({len(self.failures)} problem{'s' if len(self.failures) != 1 else ''}):"]
        lines += [f"  - {f}" for f in self.failures]
        if self.out_dir is not None:
            lines.append(f"details: {self.out_dir / 'summary.json'} and {self.out_dir / 'data_docs' / 'index.html'}")
        super().__init__("\n".join(lines))


OBS_COLUMNS = ("soma_joinid", "tech_sample", "assay", "cell_type", "cell_type_ontology_term_id", "is_primary_data")
ASSIGNMENT_COLUMNS = ("soma_joinid", "tech_sample", "cell_type", "split")


def _require(frame: pd.DataFrame, columns, what: str) -> None:
    """The aggregate frames need these columns; say which are missing instead of a bare KeyError."""
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{what} lacks column(s) {', '.join(map(repr, missing))}; "
                         f"has {', '.join(map(str, frame.columns))}")


def expected_rows_from(store_dir: str | Path, assignment: pd.DataFrame) -> dict[str, int]:
    """Rows the store should hold per split: ``store_report.json``'s ``rows`` when the store stage
    wrote one (it may truncate splits to a multiple of the row group), else the assignment's counts."""
    report = Path(store_dir) / "store_report.json"
    if report.exists():
        with open(report) as fh:
            rows = json.load(fh).get("rows")
        if not isinstance(rows, dict):
            raise ValueError(f"{report} has no 'rows' mapping {{split: number of rows}}")
        return {str(k): int(v) for k, v in rows.items()}
    return frames.split_row_counts(assignment)


def build_suites(
    obs: pd.DataFrame,
    assignment: pd.DataFrame,
    store_dir: str | Path,
    params: Mapping,
    ontology,
    expected_rows: Mapping[str, int] | None = None,
) -> list[SuiteSpec]:
    """Every suite with its frame; the store is streamed here (one batch of rows at a time)."""
    _require(obs, OBS_COLUMNS, "obs (data/extract/obs.parquet)")
    _require(assignment, ASSIGNMENT_COLUMNS, "assignment (data/split/assignment.parquet)")
    splits = list(section(params, "split.fractions"))
    if expected_rows is None:
        expected_rows = frames.split_row_counts(assignment)
        expected_rows = {s: expected_rows.get(s, 0) for s in splits}
    specs = [extract_suite(obs, params), filters_suite(obs, ontology, params), *split_suites(obs, assignment, params)]
    n_genes, n_labels, layout_problems = store_layout(store_dir)
    for i, s in enumerate(splits):
        stats = split_row_stats(Path(store_dir) / s, n_genes_hint=n_genes)
        spec = store_suite(stats, params, expected_rows.get(s), n_genes, n_labels)
        if i == 0:  # store-wide problems reported once, with the first split
            spec.problems = layout_problems + spec.problems
        spec.info = {"rows": int(len(stats.frame)), "expected_rows": expected_rows.get(s), "n_genes": n_genes}
        specs.append(spec)
    return specs


def validate_all(
    obs: pd.DataFrame,
    assignment: pd.DataFrame,
    store_dir: str | Path,
    params: Mapping,
    ontology,
    out_dir: str | Path,
    expected_rows: Mapping[str, int] | None = None,
) -> dict:
    """Check extraction, filters, split and store; write ``out_dir/summary.json`` and
    ``out_dir/data_docs/``; return the summary or raise ``ValidationError`` listing every failure.

    ``expected_rows`` ({split: rows}) is what the store should hold per split; by default the
    assignment's counts (pass the store's own report when it truncated splits to row groups).
    """
    specs = build_suites(obs, assignment, store_dir, params, ontology, expected_rows)
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        context = make_context(tmp / "data_docs")
        records = [run_spec(context, spec) for spec in specs]
        index = build_docs(context)
        summary = summarise(specs, records)
        summary["data_docs"] = str(index.relative_to(tmp.resolve()))
        write_json(tmp / "summary.json", summary)
    if not summary["success"]:
        raise ValidationError(summary["failures"], summary, out_dir)
    return summary


def run_spec(context, spec: SuiteSpec) -> list[dict]:
    """Validate one suite; one record per expectation (plus one per problem found before GX)."""
    result, ids = run_suite(context, spec.name, spec.frame, [c.expectation for c in spec.checks], spec.index_columns)
    by_id = {i: (pos, c) for pos, (i, c) in enumerate(zip(ids, spec.checks))}
    records = []
    for er in result.results:
        d = er.to_json_dict()
        cfg = d["expectation_config"]
        pos, check = by_id.get(cfg.get("id"), (len(by_id), None))
        res = d.get("result") or {}
        problems: list[str] = []
        if not d["success"]:
            exc = exception_text(d.get("exception_info"))
            col = cfg["kwargs"].get("column")
            if exc:
                problems = [f"{cfg['type']}{f' on column {col!r}' if col else ''} could not be evaluated: {exc}"]
            elif check is not None:
                problems = check.explain(res)
            problems = problems or [f"{cfg.get('description') or cfg['type']}: failed"]
        records.append(
            {
                "_pos": pos,
                "gx_suite": spec.name,
                "type": cfg["type"],
                "column": cfg["kwargs"].get("column"),
                "description": cfg.get("description"),
                "success": bool(d["success"]),
                "observed": _observed(res),
                "explanation": "; ".join(problems) if problems else None,
                "problems": [f"{spec.label}: {p}" for p in problems],
            }
        )
    records.sort(key=lambda r: r.pop("_pos"))
    for p in spec.problems:
        records.append(
            {
                "gx_suite": spec.name,
                "type": "layout",
                "column": None,
                "description": "the files are where the store layout says",
                "success": False,
                "observed": None,
                "explanation": p,
                "problems": [f"{spec.label}: {p}"],
            }
        )
    return records


def summarise(specs: list[SuiteSpec], records: list[list[dict]]) -> dict:
    """summary.json: overall success, every failure in words, and per concern every expectation."""
    suites: dict[str, dict] = {}
    failures: list[str] = []
    for spec, recs in zip(specs, records):
        group = suites.setdefault(
            spec.group, {"success": True, "evaluated": 0, "failed": 0, "gx_suites": [], "expectations": []}
        )
        group["gx_suites"].append(spec.name)
        if spec.info:
            group.setdefault("info", {})[spec.label] = spec.info
        for r in recs:
            group["evaluated"] += 1
            if not r["success"]:
                group["failed"] += 1
                group["success"] = False
                failures.extend(r["problems"])
            group["expectations"].append({k: v for k, v in r.items() if k != "problems"})
    summary = {"success": not failures, "n_failures": len(failures), "failures": failures, "suites": suites}
    return _json_safe(summary)


def _observed(res: dict) -> dict | None:
    """The few numbers of a GX result worth keeping in summary.json."""
    keep = ("observed_value", "element_count", "unexpected_count", "missing_count", "partial_unexpected_counts")
    out = {k: res[k] for k in keep if k in res}
    if "partial_unexpected_counts" in out:
        out["partial_unexpected_counts"] = out["partial_unexpected_counts"][:10]
    return out or None


def _json_safe(obj):
    """NaN/inf are not JSON: write them as strings so summary.json stays standard JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj
