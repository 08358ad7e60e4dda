"""Pipeline stage `census`: write the embedded synthetic census (SOMA) that the default profile reads.

For the other sources (the hosted census, a local SOMA copy, .h5ad files) it only records the source in the
summary: their data is what `census.data` names, which extract and store depend on.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sctab.census.source import census_description
from sctab.config import load_params
from sctab.io import write_json
from sctab.params_schema import section


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Generate the embedded synthetic CELLxGENE-like census (real SOMA format, real CL terms and "
        "GENCODE gene ids) described by the `synthetic` section of the params file; for the other sources (hosted "
        "census, local SOMA copy, .h5ad files) record the source in the summary. The census is written donor by "
        "donor (memory flat in the number of cells); `sctab params --profile scale --cells N` sizes it.")
    parser.add_argument("--params", default="params.yaml", help="YAML parameter file (default: %(default)s)")
    parser.add_argument("--out", default=None, help="census folder (default: census.uri of the params)")
    parser.add_argument("--summary", default="data/census/summary.json", help="summary JSON (default: %(default)s)")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    c = section(params, "census")
    if c.source != "embedded":
        record = {"source": c.source, "version": c.version, "uri": c.uri, "data": c.data,
                  "obs_value_filter": c.obs_value_filter}
        if c.source == "h5ad":
            record["inputs"] = [{"file": str(p), "bytes": Path(p).stat().st_size if Path(p).is_file() else None}
                                for p in c.inputs]
        print(f"profile {section(params, 'profile')!r} reads {census_description(params)}; nothing to generate")
        write_json(args.summary, record)
        return
    from sctab.census.synthetic import build_synthetic_census  # anndata + tiledbsoma: seconds, embedded only

    info = build_synthetic_census(params, args.out, progress=True)  # a bar of cells written, donor by donor
    write_json(args.summary, info)
    print(f"wrote embedded census to {args.out or c.uri}: "
          f"{info['n_cells']} cells x {info['n_genes']} genes, {info['n_datasets']} datasets, "
          f"{info['n_donors']} donors")


if __name__ == "__main__":
    main()
