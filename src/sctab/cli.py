"""The `sctab` command: profiles, and a look at what the pipeline produced.

Stages themselves run through `dvc repro` (pipelines/*.py); this command holds the user-facing tools.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from sctab.config import ConfigError, available_profiles, load_profile, profile_path


def _cmd_params(args) -> int:
    if args.list:
        print("\n".join(available_profiles()))
        return 0
    load_profile(args.profile)  # validates before anything is overwritten
    src = profile_path(args.profile)
    header = f"# Materialised from conf/profiles/{args.profile}.yaml by `sctab params --profile {args.profile}`.\n" \
             f"# DVC tracks this file; edit it (or the profile) to change a run.\n"
    tmp = Path(args.out).with_suffix(".tmp")
    tmp.write_text(header + src.read_text())
    shutil.move(tmp, args.out)
    print(f"wrote {args.out} from profile {args.profile!r}")
    return 0


def _cmd_store_info(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from sctab.data.store import Store

    store = Store(args.store)
    t = Table(title=f"store {store.root}")
    t.add_column("split")
    t.add_column("rows", justify="right")
    t.add_column("parts", justify="right")
    t.add_column("row groups", justify="right")
    for s in ("train", "val", "test"):
        sp = store.split(s)
        t.add_row(s, f"{sp.n_rows:,}", str(len(sp.files)), str(len(sp.row_groups)))
    Console().print(t)
    print(f"{store.n_genes} genes, {store.n_classes} cell types")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sctab", description="scTab platform: census -> store -> models -> registry. "
                                "Pipeline stages run with `dvc repro`; see README.md.")
    sub = p.add_subparsers(dest="command", required=True)
    pp = sub.add_parser("params", help="write params.yaml from a profile in conf/profiles/",
                        description="Materialise a profile (tiny = embedded synthetic census, census-2023-05-15 = the "
                        "paper's scale) into params.yaml, the file DVC tracks.")
    pp.add_argument("--profile", default="tiny", help="profile name (default: %(default)s)")
    pp.add_argument("--out", default="params.yaml", help="file to write (default: %(default)s)")
    pp.add_argument("--list", action="store_true", help="list the available profiles and exit")
    pp.set_defaults(func=_cmd_params)
    si = sub.add_parser("store-info", help="summarise a training store (ours or the published scTab one)")
    si.add_argument("store", nargs="?", default="data/store", help="store folder (default: %(default)s)")
    si.set_defaults(func=_cmd_store_info)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, FileNotFoundError, ValueError) as e:
        print(f"sctab: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
