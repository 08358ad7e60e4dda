"""DVC stage `validate`: Great Expectations checks of extraction, filters, split and store.

Writes <out>/summary.json and <out>/data_docs/index.html, prints a table of suite results, and
exits non-zero (with every failing check in plain words) so that a bad dataset stops the DAG.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd
from rich.console import Console
from rich.table import Table

from sctab.config import load_params
from sctab.ontology import CellOntology


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="pipelines/validate.py",
        description=(
            "Validate the pipeline's data with Great Expectations: extracted cells (primary data, "
            "allowed assays, unique ids), the paper's cell type filters, the donor-wise split and "
            "the normalised store. Fails (exit 1) naming every problem; the report is written either way."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--params", default="params.yaml", help="parameter file (filters, split, store, validate sections)")
    p.add_argument("--obs", default="data/extract/obs.parquet", help="extracted cells, one row per kept cell")
    p.add_argument("--assignment", default="data/split/assignment.parquet", help="split assignment per cell")
    p.add_argument(
        "--store",
        default="data/store",
        help="store directory (train/ val/ test/ parts, categorical_lookup/, var.parquet); its "
        "store_report.json 'rows', if present, gives the expected rows per split",
    )
    p.add_argument("--ontology", default="data/ontology/cl.obo", help="Cell Ontology OBO file")
    p.add_argument("--out", default="reports/validation", help="report directory (summary.json, data_docs/)")
    return p.parse_args(argv)


def print_table(summary: dict) -> None:
    """One line per concern: checks run, failed, and status."""
    table = Table(title="data validation")
    for col in ("suite", "checks", "failed", "status"):
        table.add_column(col)
    for name, suite in summary["suites"].items():
        status = "[green]passed[/green]" if suite["success"] else "[red]FAILED[/red]"
        table.add_row(name, str(suite["evaluated"]), str(suite["failed"]), status)
    Console().print(table)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from sctab.validate import ValidationError, expected_rows_from, validate_all  # Great Expectations: seconds

    params = load_params(args.params)
    obs = pd.read_parquet(args.obs)
    assignment = pd.read_parquet(args.assignment)
    ontology = CellOntology.from_obo(args.ontology)
    expected = expected_rows_from(args.store, assignment)
    try:
        summary = validate_all(obs, assignment, args.store, params, ontology, args.out, expected_rows=expected)
    except ValidationError as err:
        if err.summary is not None:
            print_table(err.summary)
        print(str(err), file=sys.stderr)
        return 1
    print_table(summary)
    print(f"all checks passed; report in {Path(args.out) / 'summary.json'} and {Path(args.out) / summary['data_docs']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
