"""Pipeline stage `census`: write the embedded synthetic census (SOMA) that the default profile reads.

Skipped for profiles whose census.source is `cellxgene` (the hosted census needs no local copy).
"""

from __future__ import annotations

import argparse

from sctab.config import load_params
from sctab.io import write_json


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Generate the embedded synthetic CELLxGENE-like census (real SOMA format, real CL terms and "
        "GENCODE gene ids) described by the `synthetic` section of the params file.")
    parser.add_argument("--params", default="params.yaml", help="YAML parameter file (default: %(default)s)")
    parser.add_argument("--out", default=None, help="census folder (default: census.uri of the params)")
    parser.add_argument("--summary", default="data/census/summary.json", help="summary JSON (default: %(default)s)")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    if params["census"].get("source") != "embedded":
        print(f"profile {params['profile']!r} reads the hosted CELLxGENE census; nothing to generate")
        write_json(args.summary, {"source": params["census"].get("source"), "version": params["census"].get("version")})
        return
    from sctab.census.synthetic import build_synthetic_census  # anndata + tiledbsoma: seconds, embedded only

    info = build_synthetic_census(params, args.out)
    write_json(args.summary, info)
    print(f"wrote embedded census to {args.out or params['census']['uri']}: "
          f"{info['n_cells']} cells x {info['n_genes']} genes, {info['n_datasets']} datasets, "
          f"{info['n_donors']} donors")


if __name__ == "__main__":
    main()
