"""Pipeline stage `store`: stream raw counts of the kept cells, normalise (10,000 + log1p), write parquet."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd

from sctab.census.source import open_counts
from sctab.config import load_params
from sctab.data.store_writer import write_store
from sctab.ontology import CellOntology


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Write the training store in the published scTab (Merlin-compatible) layout: train/val/test "
        "part.N.parquet with X list<float32>, categorical lookups, var.parquet, class weights, the ontology "
        "child matrix and the nested train subsets. Written to a temporary folder, then renamed into place.")
    parser.add_argument("--params", default="params.yaml", help="YAML parameter file (default: %(default)s)")
    parser.add_argument("--extract", default="data/extract", help="extract stage output (default: %(default)s)")
    parser.add_argument("--split", default="data/split", help="split stage output (default: %(default)s)")
    parser.add_argument("--ontology", default="data/ontology/cl.obo", help="OBO file (default: %(default)s)")
    parser.add_argument("--out", default="data/store", help="store folder (default: %(default)s)")
    args = parser.parse_args(argv)

    ex, sp = Path(args.extract), Path(args.split)
    subsets = {p.stem: pd.read_parquet(p)["soma_joinid"].to_numpy() for p in sorted((sp / "subsets").glob("*.parquet"))}
    params = load_params(args.params)
    t0 = time.perf_counter()
    with open_counts(params) as read_counts:  # the census's raw counts; the writer itself knows no census
        report = write_store(params, pd.read_parquet(ex / "obs.parquet"), pd.read_parquet(ex / "var.parquet"),
                             pd.read_parquet(sp / "assignment.parquet"), subsets, CellOntology.from_obo(args.ontology),
                             args.out, read_counts)
    print(f"wrote store {args.out}: " + ", ".join(f"{k} {v} rows" for k, v in report["rows"].items())
          + f"; {report['n_genes']} genes, {report['n_classes']} classes in {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
