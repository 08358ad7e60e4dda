"""Pipeline stage `extract`: stream the census obs, apply the paper's six filters, select the genes."""

from __future__ import annotations

import argparse
from pathlib import Path

from sctab.census.extract import extract
from sctab.config import load_params
from sctab.console_tables import print_filter_report
from sctab.io import atomic_dir, write_json
from sctab.ontology import CellOntology


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Extract the cells that pass the paper's six filters (primary data, 10x assays, native-cell "
        "subtypes, >= min ontology ancestors, >= min cells and >= min donors per type) and the protein-coding "
        "gene space from the census named in the params file. Writes obs.parquet, var.parquet and "
        "filter_report.json.")
    parser.add_argument("--params", default="params.yaml", help="YAML parameter file (default: %(default)s)")
    parser.add_argument("--ontology", default="data/ontology/cl.obo", help="OBO file (default: %(default)s)")
    parser.add_argument("--out", default="data/extract", help="output folder (default: %(default)s)")
    args = parser.parse_args(argv)

    params = load_params(args.params)
    result = extract(params, CellOntology.from_obo(args.ontology))
    with atomic_dir(args.out) as tmp:
        result.obs.to_parquet(Path(tmp) / "obs.parquet", index=False)
        result.var.to_parquet(Path(tmp) / "var.parquet", index=False)
        write_json(Path(tmp) / "filter_report.json", result.report)
    print_filter_report(result.report)


if __name__ == "__main__":
    main()
