"""The `sctab` command: profiles, a look at the store, and the registry: register, promote, annotate.

Stages themselves run through `dvc repro` (pipelines/*.py); this command holds the user-facing tools. The
`annotate` command, the largest, is :mod:`sctab.cli.annotate`; the others are here. Every command imports
what it runs inside its handler, so `sctab --help` and `sctab params` stay fast.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from sctab.cli import annotate as annotate_command
from sctab.config import ConfigError, available_profiles, load_profile, profile_path
from sctab.params_schema import section

__all__ = ["build_parser", "main"]


def _cmd_params(args) -> int:
    if args.list:
        print("\n".join(available_profiles()))
        return 0
    profile = load_profile(args.profile)  # validates before anything is overwritten
    inputs = _reference_inputs(args.input, profile) if args.input else None
    sized = _census_size(args.cells, profile) if args.cells is not None else None
    src = profile_path(args.profile)
    cells = f" --cells {args.cells}" if sized else ""
    header = f"# Materialised from conf/profiles/{args.profile}.yaml by " \
             f"`sctab params --profile {args.profile}{cells}`.\n" \
             f"# DVC tracks this file; edit it (or the profile) to change a run.\n"
    tmp = Path(args.out).with_suffix(".tmp")
    tmp.write_text(header + src.read_text())
    if inputs or sized:
        from sctab.config import update_params_file

        if inputs:
            update_params_file(tmp, "census", inputs)
        if sized:
            from ruamel.yaml.comments import CommentedSeq

            flow = {}
            for k, v in sized[0].items():  # ranges as [lo, hi], like the profiles write them
                flow[k] = CommentedSeq(v) if isinstance(v, list) else v
                if isinstance(v, list):
                    flow[k].fa.set_flow_style()
            update_params_file(tmp, "synthetic", flow)
    shutil.move(tmp, args.out)
    print(f"wrote {args.out} from profile {args.profile!r}"
          + (f" with {len(args.input)} input(s) under {inputs['data']}" if inputs else "")
          + (f" with a synthetic census of about {sized[1]:,.0f} cells ({sized[0]['n_datasets']} datasets, "
             f"{sized[0]['donors_per_dataset']} donors each, {sized[0]['cells_per_donor']} cells per donor)"
             if sized else ""))
    return 0


def _census_size(n_cells: int, profile: dict) -> tuple[dict, float]:
    """synthetic.n_datasets, donors_per_dataset and cells_per_donor for --cells, and the expected census size."""
    from dataclasses import replace

    from sctab.census.synthetic import SyntheticCensusConfig, expected_cells, scaled_to_cells

    source = section(profile, "census.source")
    if source != "embedded" or section(profile, "synthetic") is None:
        raise ConfigError(f"--cells sizes the embedded synthetic census; profile {section(profile, 'profile')!r} "
                          f"reads census.source {source!r} (use tiny, bench or scale)")
    cfg = SyntheticCensusConfig.from_params(profile)
    values = scaled_to_cells(cfg, n_cells)
    return values, expected_cells(replace(cfg, **values))


def _reference_inputs(paths: list[str], profile: dict) -> dict:
    """census.inputs and census.data (the folder DVC watches: the inputs' common folder) for an h5ad profile."""
    import os

    source = section(profile, "census.source")
    if source != "h5ad":
        raise ConfigError(f"--input is for a profile whose census.source is h5ad (e.g. reference); "
                          f"{section(profile, 'profile')!r} reads {source!r}")
    for p in paths:
        if not Path(p).is_file() or not p.endswith(".h5ad"):
            raise ConfigError(f"--input {p} is not an existing .h5ad file")
    folder = os.path.commonpath([os.path.dirname(os.path.normpath(p)) or "." for p in paths])
    outputs = ("data/census", "data/extract", "data/split", "data/store", "data/augment", "data/pca", "models")
    if folder in ("", ".", "data") or any(o.startswith(folder.rstrip("/") + "/") for o in outputs):
        raise ConfigError(f"the inputs' common folder {folder or '.'!r} would hold pipeline outputs as well: DVC "
                          f"watches that folder, so put the .h5ad files in a folder of their own, e.g. "
                          f"data/reference/")
    return {"inputs": [os.path.normpath(p) for p in paths], "data": folder}


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


def _print_promotion(p) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"{p.name}: promote version {p.candidate} to @champion?")
    for col in ("role", "version", "test_f1_macro", "test_split", "git_commit", "aliases"):
        t.add_column(col)
    for r in p.rows:
        t.add_row(*(str(r[c]) for c in ("role", "version", "test_f1_macro", "test_split", "git_commit", "aliases")))
    Console(width=max(Console().width, 140)).print(t)
    print(("promoted: " if p.promoted else "not promoted: ") + p.reason)


def _show_check(check) -> None:
    """--check: the changes table (or why there is none), printed before @champion moves."""
    from sctab.annotation.changes import PRINTED_ROWS

    if isinstance(check, str):
        print(check)
        return
    print(f"check on {check.file}:")
    print(check.changes.to_markdown(max_rows=PRINTED_ROWS))


def _cmd_promote(args) -> int:
    from sctab.registry import promote

    if args.name and args.model and args.name != args.model:
        raise ConfigError(f"promote: the model is named twice, {args.name!r} and --model {args.model!r}")
    name = args.name or args.model or "sctab-ensemble"
    p = promote(name, args.version, force=args.force, check=args.check, show=_show_check if args.check else None,
                trust_pickle=args.trust_pickle, ontology=args.ontology)
    _print_promotion(p)
    if p.check_run:
        print(f"check recorded with the promotion: run {p.check_run} of experiment 'registry' (artifacts "
              f"promotion_check/{p.check.files[0].name} and .md), tag promotion_check_run of version {p.candidate}")
    return 0 if p.promoted or p.champion == p.candidate else 1


def _cmd_models(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from sctab.annotation.resolve import DEFAULT_TAG
    from sctab.registry.register import client

    c = client()
    t = Table(title="registered models (val rank: by validation macro F1 among the models registered together; "
                    "* = `sctab annotate`'s default, registry.champion)")
    for col in ("model", "version", "aliases", "val_f1_macro", "val rank", "test_f1_macro", "min_probability", "kind",
                "data_version", "created"):
        t.add_column(col)
    import datetime as dt

    for rm in sorted(c.search_registered_models(), key=lambda m: m.name):
        if args.name and rm.name != args.name:
            continue
        by_version: dict[str, list[str]] = {}
        for alias, version in (rm.aliases or {}).items():
            by_version.setdefault(str(version), []).append("@" + alias)
        for v in sorted(c.search_model_versions(f"name = '{rm.name}'"), key=lambda v: int(v.version)):
            tags = v.tags or {}
            created = dt.datetime.fromtimestamp(v.creation_timestamp / 1000).strftime("%Y-%m-%d %H:%M")
            star = " *" if (rm.tags or {}).get(DEFAULT_TAG) == "true" else ""
            t.add_row(rm.name + star, str(v.version), ", ".join(sorted(by_version.get(str(v.version), []))),
                      tags.get("val_f1_macro", ""), tags.get("val_rank", ""), tags.get("test_f1_macro", ""),
                      tags.get("min_probability", ""), tags.get("model_kind", ""), tags.get("data_version", ""),
                      created)
    Console(width=max(Console().width, 140)).print(t)
    return 0


def _cmd_import_checkpoint(args) -> int:
    from sctab.config import load_params
    from sctab.registry.importer import import_checkpoints

    params = load_params(args.params) if Path(args.params).exists() else {"profile": "imported"}
    v = import_checkpoints(args.checkpoints, var_path=args.var, cell_types_path=args.cell_types, name=args.name,
                           ontology_path=args.ontology, params=params, store=args.store, test_f1=args.test_f1)
    f1 = "unknown" if v.test_f1_macro is None else f"{v.test_f1_macro:.4f}"
    print(f"{v.name} version {v.version}{' (already registered)' if v.reused else ''} from "
          f"{len(args.checkpoints)} checkpoint(s); test macro F1 {f1}; alias @challenger")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sctab", description="scTab platform: census -> store -> models -> registry. "
                                "Pipeline stages run with `dvc repro`; see README.md.")
    sub = p.add_subparsers(dest="command", required=True)
    pp = sub.add_parser("params", help="write params.yaml from a profile in conf/profiles/",
                        description="Materialise a profile (tiny = embedded synthetic census, census-2023-05-15 = the "
                        "paper's scale, reference = your own .h5ad files with --input) into params.yaml, the file "
                        "DVC tracks.")
    pp.add_argument("--profile", default="tiny", help="profile name (default: %(default)s)")
    pp.add_argument("--out", default="params.yaml", help="file to write (default: %(default)s)")
    pp.add_argument("--list", action="store_true", help="list the available profiles and exit")
    pp.add_argument("--input", action="append", default=None, metavar="H5AD",
                    help="for an h5ad profile (reference): a labelled .h5ad file, repeatable; sets census.inputs "
                    "and census.data (their folder, which DVC watches)")
    pp.add_argument("--cells", type=int, default=None, metavar="N",
                    help="for a profile with the embedded census (tiny, bench, scale): size the synthetic census to "
                    "about N cells (atlas copies included). From the profile's own synthetic section, with s = N / its "
                    "expected size: n_datasets grows as sqrt(s) (at most 900), donors_per_dataset as s^(1/4) and "
                    "cells_per_donor takes the rest, keeping the ranges' low:high ratios; e.g. --profile scale "
                    "--cells 500000")
    pp.set_defaults(func=_cmd_params)
    si = sub.add_parser("store-info", help="summarise a training store (ours or the published scTab one)")
    si.add_argument("store", nargs="?", default="data/store", help="store folder (default: %(default)s)")
    si.set_defaults(func=_cmd_store_info)
    annotate_command.add_parser(sub)
    pr = sub.add_parser("promote", help="move @champion to a version if its test F1 is at least the champion's",
                        description="Compare a version (default: @challenger) with @champion of a registered model on "
                        "test macro F1 over the same test split; move @champion only if it is at least as good, unless "
                        "--force. Prints the comparison; exit code 1 when refused. --check FILE.h5ad first annotates "
                        "FILE with the version and the current @champion (sctab annotate --compare-with) and prints "
                        "the cells per (previous, new) label pair before @champion moves; the summary is recorded "
                        "with the promotion as a run 'promote NAME vN' of the MLflow experiment 'registry' (artifacts "
                        "promotion_check/<FILE stem>.changes.json and .md), named by the version's tag "
                        "promotion_check_run. Without a champion there is nothing to compare: it says so and promotes.")
    pr.add_argument("name", nargs="?", default=None, metavar="NAME",
                    help="registered model name, as --model (default: sctab-ensemble)")
    pr.add_argument("--model", default=None, help="registered model name (default: sctab-ensemble)")
    pr.add_argument("--version", default=None, help="version to promote (default: the one with @challenger)")
    pr.add_argument("--force", action="store_true", help="promote even if it is worse or not comparable")
    pr.add_argument("--check", default=None, metavar="FILE.h5ad",
                    help="annotate FILE with the version and @champion, print and record how the labels change "
                    "(a promotion that is refused checks nothing; a file or version that cannot be used is an "
                    "error and nothing is promoted)")
    pr.add_argument("--trust-pickle", action="store_true", help="with --check: allow loading pickled (CellTypist) "
                    "versions")
    pr.add_argument("--ontology", default="data/ontology/cl.obo", help="with --check: the Cell Ontology OBO "
                    "(default: %(default)s, else the release the models were built with)")
    pr.set_defaults(func=_cmd_promote)
    mo = sub.add_parser("models", help="list registered models, versions, aliases and test F1")
    mo.add_argument("name", nargs="?", default=None, help="only this registered model")
    mo.set_defaults(func=_cmd_models)
    ic = sub.add_parser("import-checkpoint", help="register published scTab checkpoints as an ensemble version",
                        description="Read published scTab Lightning checkpoints (one per seed; weights only, no "
                        "pickled code) and register them together as one version of the ensemble (@challenger).")
    ic.add_argument("checkpoints", nargs="+", help=".ckpt files, one per ensemble member")
    ic.add_argument("--var", required=True, help="the published var.parquet (feature_id, feature_name)")
    ic.add_argument("--cell-types", required=True, help="the published categorical_lookup/cell_type.parquet")
    ic.add_argument("--name", default="sctab-ensemble", help="registered model name (default: %(default)s)")
    ic.add_argument("--store", default=None, help="score the ensemble on this store's test split (genes and classes "
                    "must match) to record its test macro F1")
    ic.add_argument("--test-f1", type=float, default=None, help="record this test macro F1 instead")
    ic.add_argument("--ontology", default="data/ontology/cl.obo", help="Cell Ontology OBO (default: %(default)s)")
    ic.add_argument("--params", default="params.yaml", help="for the profile tag (default: %(default)s)")
    ic.set_defaults(func=_cmd_import_checkpoint)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, FileNotFoundError, ValueError) as e:
        print(f"sctab: error: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:
        from sctab.registry.register import RegistryError

        if not isinstance(e, RegistryError):
            raise
        print(f"sctab: error: {e}", file=sys.stderr)
        return 2
