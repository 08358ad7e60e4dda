"""The `sctab annotate` command: its options and what it runs (:mod:`sctab.cli` registers it beside the other
commands). Its own module because it is the largest command, and its options mirror
:func:`sctab.annotation.api.annotate_file`'s, so they change together. It imports the annotation package only when
it runs, so the other commands do not pay for it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sctab.config import ConfigError, check_device


def add_parser(sub) -> argparse.ArgumentParser:
    """Add ``annotate`` to the ``sctab`` subcommands ``sub``."""
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
    an.set_defaults(func=run)
    return an


def restrict_names(values: list[str] | None) -> list[str] | None:
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


def run(args) -> int:
    """`sctab annotate`: annotate the file, print the summary (and any comparison), write the plot and page."""
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
    previous = load_previous(args.compare_with, args, device)
    report = annotate_file(args.input, args.output, ann, layer=args.layer, gene_column=args.gene_column,
                           from_log1p=args.from_log1p, allow_non_integer=args.allow_non_integer,
                           batch_size=args.batch_size, key_added=args.key_added, progress=not args.quiet,
                           min_probability=args.min_probability, restrict_to=restrict_names(args.restrict_to),
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


def load_previous(model: str | None, args, device: str):
    """The --compare-with model, loaded as --model is; its errors name the option."""
    if model is None:
        return None
    from sctab.annotation import AnnotateError, load_annotator

    try:
        return load_annotator(model, trust_pickle=args.trust_pickle, uncertainty_threshold=args.uncertainty_threshold,
                              store=args.store, ontology=args.ontology, device=device)
    except AnnotateError as e:
        raise AnnotateError(f"--compare-with: {e}") from e
