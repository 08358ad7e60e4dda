"""The `sctab` command: profiles, a look at the store, and the registry: register, promote, annotate.

Stages themselves run through `dvc repro` (pipelines/*.py); this command holds the user-facing tools.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from sctab.config import ConfigError, available_profiles, check_device, load_profile, profile_path
from sctab.params_schema import section


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


def _restrict_names(values: list[str] | None) -> list[str] | None:
    """--restrict-to values: a label or CL id each, or a .txt file of them, one per line."""
    if not values:
        return None
    names = []
    for v in values:
        if v.endswith(".txt") and Path(v).is_file():
            names += [line.strip() for line in Path(v).read_text().splitlines() if line.strip()]
        else:
            names.append(v)
    return names


def _cmd_annotate(args) -> int:
    from sctab.allocator import keep_freed_memory
    from sctab.annotation import annotate_file, load_annotator

    if args.report_groupby and not args.report:
        raise ConfigError("--report-groupby names the dot plot's clusters of --report OUT.html; give --report too")
    if args.report:  # a bad page path or cluster column fails before any work
        from sctab.annotation.html_report import check_groupby, check_report_path

        check_report_path(args.report)
        check_groupby(args.input, args.report_groupby)
    keep_freed_memory()  # the per-batch buffers reuse freed memory (SCTAB_MALLOC=system: glibc's defaults)
    device = check_device(args.device, "--device")
    ann = load_annotator(args.model, trust_pickle=args.trust_pickle, uncertainty_threshold=args.uncertainty_threshold,
                         store=args.store, ontology=args.ontology, device=device)
    previous = _load_previous(args.compare_with, args, device)
    report = annotate_file(args.input, args.output, ann, layer=args.layer, gene_column=args.gene_column,
                           from_log1p=args.from_log1p, allow_non_integer=args.allow_non_integer,
                           batch_size=args.batch_size, key_added=args.key_added, progress=not args.quiet,
                           min_probability=args.min_probability, restrict_to=_restrict_names(args.restrict_to),
                           majority_voting=args.majority_voting, over_clustering=args.over_clustering,
                           resolution=args.resolution, min_prop=args.min_prop,
                           min_gene_coverage=args.min_gene_coverage, probabilities=args.probabilities,
                           compare_labels=args.compare_labels, label_map=args.label_map, ontology=args.ontology,
                           compare_with=previous)
    print(report.summary())
    print(f"wrote {args.output}")
    if report.comparison is not None:
        from sctab.annotation.compare import compare_paths

        print()
        print(report.comparison.to_markdown())
        print("wrote " + " and ".join(str(p) for p in compare_paths(args.output)))
    if report.changes is not None:
        from sctab.annotation.changes import PRINTED_ROWS, changes_paths

        print()
        print(report.changes.to_markdown(max_rows=PRINTED_ROWS))
        print("wrote " + " and ".join(str(p) for p in changes_paths(args.output)))
    if args.plot:
        import anndata

        from sctab.annotation import plot_annotation

        adata = anndata.read_h5ad(args.output) if str(args.output).endswith(".h5ad") else None
        if adata is None:
            print("sctab: --plot needs an .h5ad output", file=sys.stderr)
        else:
            plot_annotation(adata, key_added=args.key_added, path=args.plot)
            print(f"wrote {args.plot}")
    if args.report:
        from sctab.annotation.html_report import changes_section, comparison_section, write_report

        sections = [comparison_section(report.comparison)] if report.comparison is not None else []
        if report.changes is not None:
            sections.append(changes_section(report.changes))
        write_report(args.report, args.input, args.output, report, key_added=args.key_added,
                     groupby=args.report_groupby, sections=sections, layer=args.layer, from_log1p=args.from_log1p,
                     allow_non_integer=args.allow_non_integer)
        print(f"wrote {args.report}")
    return 0


def _load_previous(model: str | None, args, device: str):
    """The --compare-with model, loaded as --model is; its errors name the option."""
    if model is None:
        return None
    from sctab.annotation import AnnotateError, load_annotator

    try:
        return load_annotator(model, trust_pickle=args.trust_pickle, uncertainty_threshold=args.uncertainty_threshold,
                              store=args.store, ontology=args.ontology, device=device)
    except AnnotateError as e:
        raise AnnotateError(f"--compare-with: {e}") from e


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
    an = sub.add_parser("annotate", help="label the cells of an .h5ad with a registered model",
                        description="Annotate INPUT.h5ad with a scTab model: raw counts are read from X, a 'counts' "
                        "layer or .raw.X (streamed, so files larger than memory work), genes matched by Ensembl id or "
                        "symbol (absent ones zero-filled and reported), normalised as the model expects. Writes obs "
                        "columns <key>_label, _cell_type_ontology_term_id, _probability, _uncertainty and a coarser "
                        "_coarse_label (lowest common ontology ancestor) for uncertain cells. CellTypist's options: "
                        "--min-probability (p_thres; 'Unassigned' below it), --restrict-to, --majority-voting, "
                        "--probabilities, plus --min-gene-coverage; docs/annotate.md maps the columns to "
                        "CellTypist's. --compare-labels COLUMN sets the file's own labels against the predictions "
                        "through the Cell Ontology (per cell <key>_agreement, per label a table); --compare-with "
                        "MODEL runs a second model in the same pass and says how each cell's label changed. The gene "
                        "coverage is always reported. The output is written only when every cell was annotated. "
                        "Freed memory is kept for reuse between batches (faster, about 1 GiB more peak memory); "
                        "SCTAB_MALLOC=system turns that off.")
    an.add_argument("input", help="the .h5ad file to annotate")
    an.add_argument("-o", "--output", required=True, help="output .h5ad (input + new obs columns), .csv or .parquet")
    an.add_argument("--model", default=None,
                    help="models:/<name>@<alias>, models:/<name>/<version>, runs:/..., or a model folder (default: "
                    "@champion of the registered model the register stage marked as the default, registry.champion: "
                    "the best on validation for a reference, the scTab ensemble for the paper's profiles; else "
                    "models:/sctab-ensemble@champion)")
    an.add_argument("--layer", default=None, help="matrix of raw counts: X, raw, or a layer name (default: the first "
                    "of X, layers['counts'], .raw.X that holds counts)")
    an.add_argument("--gene-column", default=None, help="var column with Ensembl ids or symbols ('index' for "
                    "var_names; default: detected)")
    an.add_argument("--from-log1p", action="store_true", help="the matrix holds log1p of size-factor normalised "
                    "values (scanpy normalize_total + log1p): undo the log1p and renormalise")
    an.add_argument("--allow-non-integer", action="store_true", help="accept non-integer counts (e.g. ambient-"
                    "corrected)")
    an.add_argument("--batch-size", type=int, default=4096, help="cells per prediction batch (default: %(default)s)")
    an.add_argument("--uncertainty-threshold", type=float, default=None,
                    help="above it a cell also gets the coarse label (default: the model's, 0.5)")
    an.add_argument("--min-probability", type=float, default=None, metavar="P",
                    help="CellTypist's p_thres: a cell whose top probability is below P is labelled 'Unassigned' "
                    "(default: the model's own, chosen at registration as the smallest P giving 0.95 precision on "
                    "its validation split; 0 disables)")
    an.add_argument("--restrict-to", action="append", default=None, metavar="LABEL",
                    help="predict only these classes, probabilities renormalised over them: a class label, a Cell "
                    "Ontology id, or a broader ontology term (all model classes below it); repeat the option, or "
                    "give a .txt file with one per line")
    an.add_argument("--majority-voting", action="store_true",
                    help="over-cluster the cells (Leiden, CellTypist's resolution by cell count) and add "
                    "<key>_over_clustering and <key>_majority_voting (each cluster's most frequent label) beside "
                    "the per-cell label")
    an.add_argument("--over-clustering", default=None, metavar="COLUMN",
                    help="obs column with clusters to vote over instead of Leiden (implies --majority-voting)")
    an.add_argument("--resolution", type=float, default=None,
                    help="Leiden resolution of the over-clustering (default: 5 below 5k cells ... 30 from 200k)")
    an.add_argument("--min-prop", type=float, default=0.0,
                    help="a cluster whose majority label holds a smaller share is 'Heterogeneous' "
                    "(default: %(default)s)")
    an.add_argument("--min-gene-coverage", type=float, default=None, metavar="FRACTION",
                    help="refuse the input (nothing written) if it has fewer than this fraction of the model's "
                    "genes (default: no minimum; below 0.5 a warning is logged)")
    an.add_argument("--probabilities", action="store_true",
                    help="also write every class's probability: obsm['<key>_probabilities'] (classes in "
                    "uns['<key>_probabilities']) in an .h5ad, columns <key>_probabilities:<class> in a table")
    an.add_argument("--compare-labels", default=None, metavar="COLUMN",
                    help="compare the file's own labels in obs COLUMN (CL ids, or free text mapped to the Cell "
                    "Ontology by label or exact synonym; --label-map for the rest) with the predictions through "
                    "the ontology: adds <key>_agreement per cell (exact; model finer = the prediction is a subtype "
                    "of your label, agreement in the paper's sense; model coarser; sibling; disagree; unassigned; "
                    "not in the model = your type is no class and no ancestor or descendant of one; label not "
                    "mapped) and prints a table per label (cells, CL id, relation to the model's classes, agreement "
                    "shares, top predictions, ontology-corrected F1 over the labels the model covers), also "
                    "written as <OUT stem>.compare.json and .compare.md")
    an.add_argument("--compare-with", default=None, metavar="MODEL",
                    help="also annotate with MODEL (e.g. models:/sctab-ensemble@champion while --model is "
                    "@challenger) in the same pass over the file, each model on its own genes, with the same label "
                    "options: adds <key>_previous_label, <key>_previous_cell_type_ontology_term_id and "
                    "<key>_change per cell (same; finer = the new label is a Cell Ontology descendant of the "
                    "previous one; coarser = an ancestor; sibling = they share a direct parent; other) and prints "
                    "the cells per (previous, new) label pair, largest first, also written as <OUT "
                    "stem>.changes.json and .changes.md. A model that does not load, models that share no genes, "
                    "or a file without the genes of either model (--min-gene-coverage applies to both) is an error "
                    "and nothing is written")
    an.add_argument("--label-map", default=None, metavar="YAML",
                    help="with --compare-labels: a YAML file mapping labels to CL ids (label: CL:0000000, or "
                    "'unknown' to leave one unmapped), as census.label_map of the h5ad reference source")
    an.add_argument("--key-added", default="sctab", help="prefix of the new obs columns (default: %(default)s)")
    an.add_argument("--plot", default=None, help="also save an embedding coloured by label and uncertainty (PNG)")
    an.add_argument("--report", default=None, metavar="OUT.html",
                    help="also write one self-contained HTML page (figures inline, no external links): an "
                    "embedding coloured by label and uncertainty (the input's obsm X_umap/X_tsne, else a UMAP of "
                    "its X_pca or of its normalised expression; at most 50,000 cells, sampled), a CellTypist-style "
                    "dot plot of the labels by cluster, the shares of unassigned and coarse-labelled cells, the "
                    "gene coverage and the --compare-labels table. Its folder must exist")
    an.add_argument("--report-groupby", default=None, metavar="COLUMN",
                    help="obs column of clusters for the report's dot plot (default: the over-clustering of "
                    "--majority-voting; without either the dot plot is left out)")
    an.add_argument("--trust-pickle", action="store_true", help="allow loading a pickled model (CellTypist) from a "
                    "folder you trust")
    an.add_argument("--store", default="data/store",
                    help="for a pipeline model folder: the store (default: %(default)s)")
    an.add_argument("--ontology", default="data/ontology/cl.obo",
                    help="for a pipeline model folder and --compare-labels: the Cell Ontology OBO (default: "
                    "%(default)s; --compare-labels without it uses the release the model was built with, bundled "
                    "with cellxgene-ontology-guide)")
    an.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]: where the model runs (default: "
                    "%(default)s = the GPU when torch can use one; cuda without one is an error naming the torch "
                    "build)")
    an.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    an.set_defaults(func=_cmd_annotate)
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


if __name__ == "__main__":
    sys.exit(main())
