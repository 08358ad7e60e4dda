"""Pipeline stage `ontology`: write the Cell Ontology release named in params.yaml as an OBO file.

The CL release comes from the copy bundled with cellxgene-ontology-guide (no network), so the
ontology every later stage uses is pinned by `ontology.cl_version` and tracked by DVC.
"""

from __future__ import annotations

import argparse

from sctab.config import load_params
from sctab.ontology import load_bundled_cl, write_cl_obo
from sctab.params_schema import section


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Write the Cell Ontology (CL) release named by ontology.cl_version in the params file "
        "as an OBO 1.4 file (from the copy bundled with cellxgene-ontology-guide; no network)."
    )
    parser.add_argument("--params", default="params.yaml", help="YAML parameter file (default: %(default)s)")
    parser.add_argument("--out", default="data/ontology/cl.obo", help="OBO file to write (default: %(default)s)")
    args = parser.parse_args(argv)
    version = section(load_params(args.params), "ontology.cl_version")
    path = write_cl_obo(version, args.out)
    print(f"wrote {len(load_bundled_cl(version))} Cell Ontology {version} terms to {path}")


if __name__ == "__main__":
    main()
