"""``sctab annotate ... --report OUT.html``: one self-contained page a biologist can open and send on.

Why a page: the annotated .h5ad answers "what is each cell", but whether to trust it is read from pictures
and a few shares. The page holds, from the written output and its input:

- an embedding (the input's own UMAP/t-SNE, else a UMAP of its PCA, else of a PCA of its normalised
  expression; at most ``max_cells`` cells drawn, sampled at random, and the page says so) coloured by
  predicted label and by uncertainty;
- a CellTypist-style dot plot: rows the clusters (the over-clustering of majority voting, or a given obs
  column), columns the predicted labels, dot size the share of the cluster's cells given that label, colour
  the mean probability of that label over the cluster (from the probability matrix when written, else the
  mean probability of the cells given it);
- the share of cells labelled at the class level, given a coarser label, or "Unassigned";
- the gene coverage;
- extra sections: tables from ``--compare-labels`` and any other comparison (:class:`Section`).

Everything is inline (PNG figures as base64, CSS in the page; no script, no external address), and the page
is written to a temporary file renamed into place.

This module gathers the parts and lays out the page; the parts are their own modules: the embedding
(:mod:`sctab.annotation.report_embedding`), the numbers (:mod:`sctab.annotation.report_tables`), the dot plot
and shares figures (:mod:`sctab.annotation.report_figures`) and the HTML primitives
(:mod:`sctab.annotation.html_render`).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from sctab.annotation.annotator import UNASSIGNED
from sctab.annotation.errors import AnnotateError
from sctab.annotation.html_render import CSS, esc, html_table, markdown_html, png, section
from sctab.annotation.report_embedding import MAX_EMBEDDING_CELLS, embedding
from sctab.annotation.report_figures import draw_dotplot, draw_shares
from sctab.annotation.report_tables import coarse_labels, dot_table, label_shares


@dataclass
class Section:
    """An extra part of the page: a title, then a table (``rows``, a list of dicts or a DataFrame) and/or
    ``markdown`` (headings, paragraphs and pipe tables, as the comparison tables' ``to_markdown()`` write it).
    This is how comparison tables plug in without the report knowing them."""

    title: str
    markdown: str = ""
    rows: list | pd.DataFrame | None = None
    note: str = ""


def comparison_section(comparison) -> Section:
    """The ``--compare-labels`` table (a :class:`sctab.annotation.compare.Comparison`) as a section."""
    return Section(title=f"Your labels (obs column '{comparison.column}') against the predictions",
                   markdown=comparison.to_markdown(),
                   note="Agreement through the Cell Ontology: 'model finer' is a prediction below your label "
                        "(right in the paper's sense); docs/annotate.md explains each value.")


def changes_section(changes, max_rows: int = 60) -> Section:
    """The ``--compare-with`` change table (a :class:`sctab.annotation.changes.Changes`) as a section: the
    largest label pairs (the totals cover every cell; the .changes.md file beside the output has all pairs)."""
    return Section(title="What the model changes against the previous one (--compare-with)",
                   markdown=changes.to_markdown(max_rows=max_rows),
                   note="Per (previous, new) label pair; 'finer' means the new label is a Cell Ontology descendant "
                        "of the previous one, 'coarser' an ancestor, 'sibling' a type with the same parent.")


# ------------------------------------------------------------------------------------------- checks
def check_report_path(path) -> Path:
    """The page's path, checked before any work: an .html name in an existing folder, not a folder itself."""
    p = Path(path)
    if p.is_dir():
        raise AnnotateError(f"--report {p} is a directory; give a file name ending in .html")
    if p.suffix.lower() != ".html":
        raise AnnotateError(f"--report {p}: the report is an HTML page, its name must end in .html")
    if not p.parent.is_dir():
        raise AnnotateError(f"--report {p}: the folder {p.parent} does not exist (create it first)")
    if not os.access(p.parent, os.W_OK):
        raise AnnotateError(f"--report {p}: the folder {p.parent} is not writable")
    return p


def check_groupby(input, column: str | None) -> None:
    """``--report-groupby COLUMN`` must be an obs column of the input (checked before any cell is annotated)."""
    if column is None or not Path(input).is_file():  # a missing input is annotate's error to name
        return
    obs = _read_obs(Path(input))
    if column not in obs.columns:
        raise AnnotateError(f"--report-groupby: obs column {column!r} is not in {input} (its columns: "
                            f"{', '.join(map(str, obs.columns)) or 'none'})")


# ------------------------------------------------------------------------------------------- reading
def _read_obs(path: Path) -> pd.DataFrame:
    import anndata

    try:
        a = anndata.read_h5ad(path, backed="r")
    except Exception as e:
        raise AnnotateError(f"cannot read the obs of {path}: {e}") from e
    try:
        return a.obs.copy()
    finally:
        a.file.close()


def _read_annotations(output: Path, key_added: str) -> tuple[pd.DataFrame, np.ndarray | None, list | None]:
    """The output's obs (or table), and its probability matrix with the class names when it was written."""
    if output.suffix == ".h5ad":
        import anndata

        a = anndata.read_h5ad(output, backed="r")
        try:
            obs = a.obs.copy()
            key = f"{key_added}_probabilities"
            probs = np.asarray(a.obsm[key]) if key in a.obsm else None
            classes = list(a.uns[key]["classes"]) if probs is not None else None
        finally:
            a.file.close()
        return obs, probs, classes
    table = pd.read_csv(output, index_col=0) if output.suffix == ".csv" else pd.read_parquet(output)
    prefix = f"{key_added}_probabilities:"
    cols = [c for c in table.columns if str(c).startswith(prefix)]
    probs = table[cols].to_numpy(dtype=np.float32) if cols else None
    return table.drop(columns=cols), probs, [c[len(prefix):] for c in cols] if cols else None


@dataclass
class Page:
    """What the page shows, gathered from the files; :meth:`html` renders it."""

    title: str
    summary: str
    facts: dict
    embedding: tuple | None            # (xy, labels, uncertainty, description)
    dots: tuple | None                 # (DotTable, what the clusters are, their obs column) or None
    dots_missing: str
    shares: pd.DataFrame
    coarse: pd.DataFrame
    coverage: dict
    sections: list = field(default_factory=list)
    key_added: str = "sctab"

    def html(self) -> str:
        from sctab.annotation.plots import draw_embedding

        k = self.key_added
        parts = []
        nav = [("overview", "Overview"), ("embedding", "Embedding"), ("dotplot", "Dot plot"),
               ("labelling", "Unassigned and coarse labels"), ("coverage", "Gene coverage")]
        nav += [(f"extra-{i}", s.title) for i, s in enumerate(self.sections)]
        facts = pd.DataFrame({"": [str(v) for v in self.facts.values()]}, index=list(self.facts))
        parts.append(section("overview", "Overview", f'<p>{esc(self.summary)}</p>' + html_table(facts, header=False)))
        if self.embedding is not None:
            xy, labels, unc, how = self.embedding
            parts.append(section("embedding", "Embedding: predicted label and uncertainty",
                                  png(draw_embedding(xy, labels, unc, how.split()[0], point_size=3.0),
                                       "embedding coloured by predicted label and by uncertainty")
                                  + f'<p class="note">{esc(how)}. Left: <code>{k}_label</code> (the 20 most '
                                    f'frequent labels, the rest grey); right: <code>{k}_uncertainty</code> '
                                    f'(1 - the top probability).</p>'))
        if self.dots is not None:
            t, name, column = self.dots
            note = (f"Rows: {name}; columns: predicted labels (<code>{k}_label</code>). Dot size: share of the "
                    f"cluster's cells given the label; colour: {esc(t.colour)}."
                    + (f" {esc(t.dropped[0].upper() + t.dropped[1:])}." if t.dropped else ""))
            parts.append(section("dotplot", "Dot plot: predicted labels by cluster",
                                  png(draw_dotplot(t, column), "dot plot of predicted labels against clusters")
                                  + f'<p class="note">{note}</p>'))
        else:
            parts.append(section("dotplot", "Dot plot: predicted labels by cluster",
                                  f'<p class="note">{esc(self.dots_missing)}</p>'))
        body = (png(draw_shares(self.shares), "share of cells by how they were labelled")
                + html_table(self.shares.rename_axis("cells were"))
                + f'<p class="note">From <code>{k}_label</code> ("{UNASSIGNED}"), <code>{k}_probability</code> '
                  f'(missing: no counts) and <code>{k}_coarse_ontology_term_id</code> against '
                  f'<code>{k}_cell_type_ontology_term_id</code> (a coarse label differs from the class: the lowest '
                  f'common ontology ancestor of the likeliest classes, given above the uncertainty threshold and '
                  f'below the minimum probability).</p>')
        if len(self.coarse):
            body += "<h3>Most frequent coarse labels</h3>" + html_table(self.coarse)
        parts.append(section("labelling", "Unassigned and coarse-labelled cells", body))
        c = self.coverage
        cov = c.get("gene_coverage", float("nan"))
        warn = '<p class="warn">Below half of the model\'s genes: labels may be unreliable.</p>' \
            if cov == cov and cov < 0.5 else ""
        cov_table = pd.DataFrame({"": [f"{cov:.1%}", f"{c.get('genes_found', 0):,} of {c.get('model_genes', 0):,}",
                                       f"{c.get('genes_missing', 0):,}", str(c.get("gene_ids", "")),
                                       f"{c.get('matrix', '')} ({c.get('values', '')})"]},
                                 index=["gene coverage", "model genes found", "absent (zero-filled)",
                                        "genes matched by", "counts read from"])
        parts.append(section("coverage", "Gene coverage", warn + html_table(cov_table, header=False)))
        for i, s in enumerate(self.sections):
            body = (f'<p class="note">{esc(s.note)}</p>' if s.note else "") \
                + (html_table(s.rows, index=isinstance(s.rows, pd.DataFrame)) if s.rows is not None else "") \
                + (markdown_html(s.markdown) if s.markdown else "")
            parts.append(section(f"extra-{i}", s.title, body))
        links = "".join(f'<a href="#{a}">{esc(t)}</a>' for a, t in nav)
        return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
                f"<title>{esc(self.title)}</title><style>{CSS}</style></head><body>\n"
                f"<h1>{esc(self.title)}</h1><nav>{links}</nav>\n" + "\n".join(parts) + "\n</body></html>\n")


def _report_dict(report) -> dict:
    return report.as_dict() if hasattr(report, "as_dict") else dict(report or {})


def build_page(input, output, report, *, key_added: str = "sctab", groupby: str | None = None,
               sections=(), max_cells: int = MAX_EMBEDDING_CELLS, seed: int = 0, layer=None, from_log1p=False,
               allow_non_integer=False) -> Page:
    """Gather the page's parts from the annotated ``output``, its ``input`` and the annotation ``report``
    (an :class:`AnnotationReport` or its dict)."""
    input, output = Path(input), Path(output)
    rep = _report_dict(report)
    k = key_added
    obs, matrix, classes = _read_annotations(output, k)
    missing = [f"{k}_{c}" for c in ("label", "probability", "uncertainty", "cell_type_ontology_term_id",
                                     "coarse_ontology_term_id", "coarse_label") if f"{k}_{c}" not in obs.columns]
    if missing:
        raise AnnotateError(f"{output} lacks the annotation columns {missing} (another --key-added?)")
    rows, xy, how = embedding(input, max_cells=max_cells, seed=seed, layer=layer, from_log1p=from_log1p,
                              allow_non_integer=allow_non_integer)
    emb = (xy, obs[f"{k}_label"].astype(str).to_numpy()[rows], obs[f"{k}_uncertainty"].to_numpy(float)[rows], how)
    dots, dots_missing = None, ""
    column = groupby or (f"{k}_over_clustering" if f"{k}_over_clustering" in obs.columns else None)
    if column is not None:
        source = obs if column in obs.columns else _read_obs(input)
        if column not in source.columns:
            raise AnnotateError(f"--report-groupby: obs column {column!r} is not in {input}")
        clusters = source[column].astype(object).where(source[column].notna(), "(none)").astype(str).to_numpy()
        t = dot_table(clusters, obs[f"{k}_label"], obs[f"{k}_probability"].fillna(0.0), matrix=matrix,
                      classes=classes)
        name = f"obs column '{column}'" + (" (the over-clustering of majority voting: "
                                           f"{rep.get('majority_voting', '')})" if column == f"{k}_over_clustering"
                                           else "")
        dots = (t, name, column)
    else:
        dots_missing = ("No clusters to plot against: annotate with --majority-voting (or --over-clustering "
                        "COLUMN), or name a cluster column with --report-groupby COLUMN.")
    facts = {"input": str(input), "output": str(output), "model": f"{rep.get('model', '?')} "
             f"({rep.get('model_kind', '?')})", "cells": f"{int(rep.get('n_cells', len(obs))):,}",
             "minimum probability": f"{rep.get('min_probability', 0):g} ({rep.get('min_probability_source', '')})"}
    if rep.get("majority_voting"):
        facts["majority voting"] = f"{rep['majority_voting']} ({rep.get('n_clusters')} clusters)"
    if rep.get("restricted_to") is not None:
        facts["restricted to"] = ", ".join(map(str, rep["restricted_to"]))
    summary = report.summary() if hasattr(report, "summary") else ""
    return Page(title=f"Cell type annotation of {input.name}", summary=summary, facts=facts, embedding=emb,
                dots=dots, dots_missing=dots_missing, shares=label_shares(obs, k, rep.get("min_probability")),
                coarse=coarse_labels(obs, k), coverage=rep, sections=list(sections), key_added=k)


def write_report(path, input, output, report, **options) -> Path:
    """Write the page to ``path`` (an .html file) through a temporary file renamed into place; ``options``
    are :func:`build_page`'s."""
    path = check_report_path(path)
    text = build_page(input, output, report, **options).html()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return path
