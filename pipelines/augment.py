"""Pipeline stage `augment`: donor-difference augmentation vectors from the train split (paper's six steps)."""

from __future__ import annotations

import argparse
import time

from rich.console import Console

from sctab.config import load_params
from sctab.data.augment import compute_augmentations, write_augmentations
from sctab.data.store import Store
from sctab.io import atomic_dir, write_json
from sctab.params_schema import section


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Compute the augmentation vectors: class-balanced subsample of the train split, centroids per "
        "cell type and donor, differences between donors of a type, zero small values, clamp, and sample from the "
        "big k-means clusters. Writes augmentations.npy and augment_report.json (atomically); with augment.enabled "
        "false (a reference without donor pairs) only the report.")
    parser.add_argument("--params", default="params.yaml", help="YAML parameter file (default: %(default)s)")
    parser.add_argument("--store", default="data/store", help="store folder (default: %(default)s)")
    parser.add_argument("--out", default="data/augment", help="output folder (default: %(default)s)")
    args = parser.parse_args(argv)

    params = load_params(args.params)
    if not section(params, "augment.enabled"):  # e.g. a reference of one donor: no donor differences to compute
        with atomic_dir(args.out) as tmp:
            write_json(tmp / "augment_report.json", {"enabled": False, "note": "augment.enabled is false: no "
                       "vectors; models with models.<model>.augment true cannot train on this output"})
        print(f"augment.enabled is false: wrote only {args.out}/augment_report.json (no augmentation vectors)")
        return
    t0 = time.perf_counter()
    vectors, r = compute_augmentations(Store(args.store), section(params, "augment"))
    write_augmentations(vectors, r, args.out)
    con = Console()
    con.print(f"subsampled {r['cells_subsampled']:,} of {r['train_cells']:,} train cells ({r['n_types']} types); "
              f"{r['groups']} (type, donor) centroids; {r['pairs']:,} donor pairs; "
              f"{r['zero_fraction']:.0%} of values zeroed, {r['all_zero_dropped']} all-zero vectors dropped")
    con.print(f"k-means ({r['kmeans']}, {r['n_clusters_used']} clusters): kept {r['clusters_kept']} clusters "
              f"> {r['min_cluster_size']} vectors ({r['members_kept']:,} of {r['vectors_clustered']:,} vectors)")
    if "note" in r:
        con.print(f"[yellow]note:[/] {r['note']}")
    con.print(f"wrote {vectors.shape[0]:,} x {vectors.shape[1]:,} vectors to {args.out} "
              f"in {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
