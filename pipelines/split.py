"""Pipeline stage `split`: donor-wise 70/15/15 split and nested train subsets (by donors and by cells)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from sctab.config import load_params
from sctab.data.split import split_cells
from sctab.io import atomic_dir, write_json


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Split the extracted cells by donor (tech_sample = dataset_id + donor_id) into train/val/test "
        "with the seeded fractions of the params file, and write nested 15/30/50/70/100%% subsets of train "
        "by donors and by cells as soma_joinid lists.")
    parser.add_argument("--params", default="params.yaml", help="YAML parameter file (default: %(default)s)")
    parser.add_argument("--obs", default="data/extract/obs.parquet", help="extracted obs (default: %(default)s)")
    parser.add_argument("--out", default="data/split", help="output folder (default: %(default)s)")
    args = parser.parse_args(argv)

    result = split_cells(pd.read_parquet(args.obs), load_params(args.params))
    with atomic_dir(args.out) as tmp:
        result.assignment.to_parquet(Path(tmp) / "assignment.parquet", index=False)
        (Path(tmp) / "subsets").mkdir()
        for name, ids in result.subsets.items():
            pd.DataFrame({"soma_joinid": ids}).to_parquet(Path(tmp) / "subsets" / f"{name}.parquet", index=False)
        write_json(Path(tmp) / "split_report.json", result.report)
    r = result.report
    print(f"split {sum(r['cells'].values())} cells of {sum(r['donors'].values())} donors: "
          + ", ".join(f"{s} {r['cells'][s]} cells / {r['donors'][s]} donors" for s in ("train", "val", "test"))
          + f" (seed {r['effective_seed']})")


if __name__ == "__main__":
    main()
