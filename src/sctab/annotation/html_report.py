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
"""

from __future__ import annotations

import base64
import contextlib
import html
import io
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from sctab.annotation.annotator import UNASSIGNED
from sctab.annotation.errors import AnnotateError

MAX_EMBEDDING_CELLS = 50_000  # above it the embedding is computed and drawn on a random sample
MAX_DOT_ROWS = 60             # clusters shown in the dot plot (the largest)
MAX_DOT_COLUMNS = 40          # predicted labels shown in the dot plot (the most frequent)
EMBEDDINGS = ("X_umap", "X_tsne")


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


def _sample(n: int, cap: int, seed: int) -> np.ndarray:
    if n <= cap:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=cap, replace=False))


def _neighbours(a, seed: int) -> None:
    """scanpy's 15-neighbour graph on obsm X_pca; from 8,192 cells through voting's pynndescent wrapper (scanpy
    cannot read pynndescent 0.7's own output)."""
    import scanpy as sc

    from sctab.annotation.voting import PYNNDESCENT_FROM, _NNDescent

    n = a.n_obs
    k = min(15, n - 1)
    knn = _NNDescent(n, k, seed) if n >= PYNNDESCENT_FROM else None
    sc.pp.neighbors(a, n_neighbors=k, use_rep="X_pca", random_state=seed, transformer=knn)


def _umap(x, seed: int, *, from_pca: bool) -> np.ndarray:
    import anndata
    import scanpy as sc

    a = anndata.AnnData(np.asarray(x, dtype=np.float32))
    n = a.n_obs
    if n < 4:  # too few cells for a neighbour graph: the first two components
        return np.pad(np.asarray(x, dtype=float)[:, :2], ((0, 0), (0, max(0, 2 - x.shape[1]))))
    if from_pca:
        a.obsm["X_pca"] = a.X
    else:
        comps = max(2, min(50, n - 1, a.n_vars - 1))
        sc.pp.pca(a, n_comps=comps, random_state=seed)
    _neighbours(a, seed)
    sc.tl.umap(a, random_state=seed)
    return np.asarray(a.obsm["X_umap"])


def _expression(input: Path, rows: np.ndarray, *, layer, from_log1p, allow_non_integer):
    """log1p(size-factor normalised) values of the chosen counts matrix for ``rows``, streamed block by block."""
    import anndata
    import h5py
    import scipy.sparse as sp

    from sctab.census.counts import LegacyH5ad, adata_matrices, choose_matrix, h5ad_matrices

    with h5py.File(input, "r") as f:
        try:
            obs_names, matrices = h5ad_matrices(f, input)
            legacy = None
        except LegacyH5ad:
            legacy = anndata.read_h5ad(input)
            obs_names, matrices = adata_matrices(legacy)
        source = choose_matrix(obs_names, matrices, layer=layer, from_log1p=from_log1p,
                               allow_non_integer=allow_non_integer, source=str(input))
        wanted = np.zeros(source.n_obs, dtype=bool)
        wanted[rows] = True
        blocks = []
        step = 8192
        for a in range(0, source.n_obs, step):
            b = min(a + step, source.n_obs)
            if wanted[a:b].any():
                blocks.append(source.matrix.read(a, b)[np.flatnonzero(wanted[a:b])])
    x = sp.vstack(blocks).tocsr().astype(np.float64)
    if source.values == "log1p":
        np.expm1(x.data, out=x.data)
    sums = np.asarray(x.sum(axis=1)).ravel()
    scale = np.divide(1e4, sums, out=np.zeros_like(sums), where=sums > 0)
    x = sp.diags(scale) @ x
    x.data = np.log1p(x.data)
    return x, source.matrix.where


def _variable(x, n_top: int = 2000) -> np.ndarray:
    """The ``n_top`` genes of highest variance (of the log values) as a dense matrix."""
    mean = np.asarray(x.mean(axis=0)).ravel()
    var = np.asarray(x.multiply(x).mean(axis=0)).ravel() - mean ** 2
    keep = np.sort(np.argsort(-var)[:min(n_top, x.shape[1])])
    return np.asarray(x[:, keep].todense(), dtype=np.float32)


def embedding(input, *, max_cells: int = MAX_EMBEDDING_CELLS, seed: int = 0, layer=None, from_log1p=False,
              allow_non_integer=False) -> tuple[np.ndarray, np.ndarray, str]:
    """(row numbers drawn, their 2-D coordinates, what they are): the input's obsm UMAP/t-SNE as it is, else a
    UMAP of its obsm X_pca, else of a PCA of its normalised expression (2,000 most variable genes)."""
    import anndata

    input = Path(input)
    a = anndata.read_h5ad(input, backed="r")
    try:
        n = a.n_obs
        rows = _sample(n, max_cells, seed)
        sampled = f"{len(rows):,} of {n:,} cells, sampled at random (seed {seed})" if len(rows) < n \
            else f"all {n:,} cells"
        for k in EMBEDDINGS:
            if k in a.obsm and a.obsm[k].shape[1] >= 2:
                return rows, np.asarray(a.obsm[k])[rows, :2], f"{k[2:].upper()} from the input's obsm['{k}'] " \
                                                              f"({sampled})"
        pca = np.asarray(a.obsm["X_pca"])[rows] if "X_pca" in a.obsm and a.obsm["X_pca"].shape[1] >= 2 else None
    finally:
        a.file.close()
    if pca is not None:
        return rows, _umap(pca[:, :50], seed, from_pca=True), \
            f"UMAP computed here on the input's obsm['X_pca'] ({min(pca.shape[1], 50)} components; {sampled})"
    x, where = _expression(input, rows, layer=layer, from_log1p=from_log1p, allow_non_integer=allow_non_integer)
    dense = _variable(x)
    return rows, _umap(dense, seed, from_pca=False), \
        f"UMAP computed here on a PCA of the input's normalised expression ({where}, size factor 10,000 + log1p, " \
        f"{dense.shape[1]:,} most variable genes; {sampled})"


# ------------------------------------------------------------------------------------------- the parts
def label_shares(obs: pd.DataFrame, key_added: str, min_probability: float | None = None) -> pd.DataFrame:
    """Cells by how they were labelled, from obs ``<key>_label``, ``_cell_type_ontology_term_id``,
    ``_coarse_ontology_term_id`` and ``_probability``: a coarse label is one moved to an ontology ancestor
    (coarse id differs from the class id, uncertainty above the threshold)."""
    k = key_added
    label = obs[f"{k}_label"].astype(str).to_numpy()
    cid = obs[f"{k}_cell_type_ontology_term_id"].astype(object).fillna("").astype(str).to_numpy()
    coarse = obs[f"{k}_coarse_ontology_term_id"].astype(object).fillna("").astype(str).to_numpy()
    no_counts = obs[f"{k}_probability"].isna().to_numpy()
    unassigned = (label == UNASSIGNED) & ~no_counts
    moved = (label != UNASSIGNED) & (coarse != cid) & ~no_counts
    floor = "" if min_probability is None else f" {min_probability:g}"
    rows = [("labelled at the class level", ~(unassigned | moved | no_counts)),
            ("labelled, and given a coarser label (an ontology ancestor) for its uncertainty", moved),
            (f"'{UNASSIGNED}': below the minimum probability{floor} (a coarse label still given)", unassigned),
            (f"'{UNASSIGNED}': no counts on the model's genes", no_counts)]
    n = max(len(label), 1)
    return pd.DataFrame({"cells": [int(m.sum()) for _, m in rows],
                         "share": [f"{m.sum() / n:.1%}" for _, m in rows]}, index=[r for r, _ in rows])


def coarse_labels(obs: pd.DataFrame, key_added: str, top: int = 10) -> pd.DataFrame:
    """The most frequent coarse labels of the cells that got one (what those cells surely are)."""
    k = key_added
    cid = obs[f"{k}_cell_type_ontology_term_id"].astype(object).fillna("").astype(str)
    coarse = obs[f"{k}_coarse_ontology_term_id"].astype(object).fillna("").astype(str)
    sel = (coarse != cid) & (coarse != "")
    counts = obs.loc[sel.to_numpy(), f"{k}_coarse_label"].astype(str).value_counts().head(top)
    return pd.DataFrame({"cells": counts.to_numpy()}, index=pd.Index(counts.index, name="coarse label"))


@dataclass
class DotTable:
    """The dot plot's numbers: clusters x labels share of cells and mean probability, and how colour was got."""

    fraction: pd.DataFrame
    probability: pd.DataFrame
    sizes: pd.Series
    colour: str
    dropped: str = ""


def dot_table(clusters, labels, probability, *, matrix: np.ndarray | None = None, classes: list | None = None,
              max_rows: int = MAX_DOT_ROWS, max_columns: int = MAX_DOT_COLUMNS) -> DotTable:
    """CellTypist's dot plot numbers. Size: share of the cluster's cells predicted as the label. Colour: mean
    probability of the label over all the cluster's cells (CellTypist's; needs the probability matrix), else
    the mean probability of the cells predicted as it."""
    clusters = pd.Series(np.asarray(clusters, dtype=object).astype(str))
    labels = pd.Series(np.asarray(labels, dtype=object).astype(str))
    counts = pd.crosstab(clusters, labels)
    sizes = counts.sum(axis=1)
    cols = labels.value_counts().index[:max_columns]
    rows = sizes.sort_values(ascending=False).index[:max_rows]
    frac = counts.loc[rows, cols].div(sizes.loc[rows], axis=0)
    p = pd.Series(np.asarray(probability, dtype=float))
    own = p.groupby([clusters, labels]).mean().unstack().reindex(index=rows, columns=cols)
    colour = "mean probability of the cells predicted as the label"
    if matrix is not None and classes is not None:
        code = pd.Categorical(clusters, categories=list(rows)).codes
        keep = code >= 0
        sums = np.zeros((len(rows), matrix.shape[1]))
        for a in range(0, len(code), 65_536):  # in blocks: no float64 copy of the whole matrix
            sel = keep[a:a + 65_536]
            block = np.nan_to_num(np.asarray(matrix[a:a + 65_536], dtype=np.float64)[sel])
            np.add.at(sums, code[a:a + 65_536][sel], block)
        means = pd.DataFrame(sums / sizes.loc[rows].to_numpy()[:, None], index=rows, columns=list(classes))
        shared = [c for c in cols if c in means.columns]
        own.loc[:, shared] = means[shared].to_numpy()
        colour = "mean probability of the label over all the cluster's cells (from the probability matrix)"
    dropped = []
    if len(sizes) > len(rows):
        dropped.append(f"the {len(rows)} largest of {len(sizes)} clusters shown")
    if labels.nunique() > len(cols):
        dropped.append(f"the {len(cols)} most frequent of {labels.nunique()} labels shown")
    # rows in the order of their main label, as CellTypist's plot reads: a near diagonal
    main = frac.to_numpy().argmax(axis=1)
    order = np.lexsort((-frac.to_numpy().max(axis=1), main))
    rows = [rows[i] for i in order]
    return DotTable(fraction=frac.loc[rows], probability=own.loc[rows], sizes=sizes.loc[rows], colour=colour,
                    dropped="; ".join(dropped))


def draw_dotplot(t: DotTable, cluster_name: str):
    """Dots on a clusters x labels grid; the colour bar and the size key stay small however many rows."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    nr, nc = t.fraction.shape
    fig, ax = plt.subplots(figsize=(max(6.0, 0.32 * nc + 4.5), max(3.0, 0.28 * nr + 2.8)), constrained_layout=True)
    yy, xx = np.meshgrid(np.arange(nr), np.arange(nc), indexing="ij")
    f = t.fraction.to_numpy(dtype=float).ravel()
    show = f > 0
    sc = ax.scatter(xx.ravel()[show], yy.ravel()[show], s=f[show] * 220, c=t.probability.to_numpy(float).ravel()[show],
                    cmap="Reds", vmin=0, vmax=1, edgecolors="grey", linewidths=0.4)
    ax.set_xticks(range(nc))
    ax.set_xticklabels(t.fraction.columns, rotation=90, fontsize=8)
    ax.set_yticks(range(nr))
    ax.set_yticklabels([f"{c} ({n:,})" for c, n in t.sizes.items()], fontsize=8)
    ax.set_xlim(-0.7, nc - 0.3)
    ax.set_ylim(nr - 0.5, -0.5)
    ax.set_xlabel("predicted label")
    ax.set_ylabel(f"{cluster_name} (cells)")
    ax.grid(color="#eeeeee", linewidth=0.5)
    ax.set_axisbelow(True)
    height = min(1.0, 2.2 / fig.get_figheight())  # about 2 inches of colour bar
    cax = ax.inset_axes((1.04, 1.0 - height, 0.03, height))
    fig.colorbar(sc, cax=cax, label="mean probability")
    for share in (0.25, 0.5, 1.0):
        ax.scatter([], [], s=share * 220, color="lightgrey", edgecolors="grey", label=f"{share:.0%}")
    ax.legend(title="share of cluster", loc="upper left", bbox_to_anchor=(1.2, 1.0), frameon=False, fontsize=8)
    return fig


def draw_shares(shares: pd.DataFrame):
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 2.2), layout="constrained")
    colours = ["#4c9a2a", "#e0a526", "#c0392b", "#7f8c8d"]
    short = ["class level", "coarser label", f"{UNASSIGNED}: low probability", f"{UNASSIGNED}: no counts"]
    total = max(int(shares["cells"].sum()), 1)
    left = 0.0
    for (_, row), colour, name in zip(shares.iterrows(), colours, short):
        w = row["cells"] / total
        ax.barh(0, w, left=left, color=colour, label=f"{name} ({row['share']})")
        left += w
    ax.set_xlim(0, 1)
    ax.set_yticks([])
    ax.set_xlabel("share of cells")
    fig.legend(fontsize=8, loc="outside lower center", ncol=4, frameon=False)
    return fig


# ------------------------------------------------------------------------------------------- HTML
CSS = """body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:2em auto;max-width:1200px;
color:#222;padding:0 1em}h1{font-size:1.5em}h2{font-size:1.2em;border-bottom:1px solid #ddd;padding-bottom:.2em;
margin-top:2em}h3{font-size:1em}table{border-collapse:collapse;margin:.6em 0;font-size:.85em}
th,td{border:1px solid #ddd;padding:.25em .6em;text-align:left;vertical-align:top}th{background:#f4f4f4}
td.n{text-align:right}img{max-width:100%;height:auto;display:block;margin:.5em 0}.note{color:#555;font-size:.9em}
.warn{color:#a33}code{background:#f4f4f4;padding:0 .2em}nav a{margin-right:1em}"""


def _esc(x) -> str:
    return html.escape(str(x), quote=True)


def _inline(text: str) -> str:
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", _esc(text))


def _png(fig, alt: str) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img alt="{_esc(alt)}" src="data:image/png;base64,{data}">'


def html_table(frame: pd.DataFrame | list, index: bool = True, header: bool = True) -> str:
    frame = pd.DataFrame(frame) if not isinstance(frame, pd.DataFrame) else frame
    head = ([_esc(frame.index.name or "")] if index else []) + [_esc(c) for c in frame.columns]
    out = ["<table>" + ("<tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>" if header else "")]
    for idx, row in frame.iterrows():
        cells = [f"<td>{_esc(idx)}</td>"] if index else []
        for v in row:
            num = isinstance(v, (int, float, np.integer, np.floating))
            cells.append(f'<td class="n">{_esc(f"{v:,}" if isinstance(v, (int, np.integer)) else v)}</td>' if num
                         else f"<td>{_esc(v)}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    return "\n".join(out) + "</table>"


def markdown_html(text: str) -> str:
    """The markdown our tables are written in: '#' headings, pipe tables, paragraphs; inline `code`."""
    out, table = [], []

    def flush():
        if table:
            rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in table
                    if not re.fullmatch(r"\|?[\s:|-]+\|?", line.strip())]
            if rows:
                head, *body = rows
                out.append("<table><tr>" + "".join(f"<th>{_inline(c)}</th>" for c in head) + "</tr>"
                           + "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>" for r in body)
                           + "</table>")
            table.clear()

    for line in text.splitlines():
        if line.strip().startswith("|"):
            table.append(line)
            continue
        flush()
        m = re.match(r"(#+)\s+(.*)", line)
        if m:
            out.append(f"<h3>{_inline(m.group(2))}</h3>")
        elif line.strip():
            out.append(f"<p>{_inline(line.strip())}</p>")
    flush()
    return "\n".join(out)


def _section(anchor: str, title: str, body: str) -> str:
    return f'<section id="{anchor}"><h2>{_esc(title)}</h2>\n{body}\n</section>'


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
        parts.append(_section("overview", "Overview", f'<p>{_esc(self.summary)}</p>' + html_table(facts, header=False)))
        if self.embedding is not None:
            xy, labels, unc, how = self.embedding
            parts.append(_section("embedding", "Embedding: predicted label and uncertainty",
                                  _png(draw_embedding(xy, labels, unc, how.split()[0], point_size=3.0),
                                       "embedding coloured by predicted label and by uncertainty")
                                  + f'<p class="note">{_esc(how)}. Left: <code>{k}_label</code> (the 20 most '
                                    f'frequent labels, the rest grey); right: <code>{k}_uncertainty</code> '
                                    f'(1 - the top probability).</p>'))
        if self.dots is not None:
            t, name, column = self.dots
            note = (f"Rows: {name}; columns: predicted labels (<code>{k}_label</code>). Dot size: share of the "
                    f"cluster's cells given the label; colour: {_esc(t.colour)}."
                    + (f" {_esc(t.dropped[0].upper() + t.dropped[1:])}." if t.dropped else ""))
            parts.append(_section("dotplot", "Dot plot: predicted labels by cluster",
                                  _png(draw_dotplot(t, column), "dot plot of predicted labels against clusters")
                                  + f'<p class="note">{note}</p>'))
        else:
            parts.append(_section("dotplot", "Dot plot: predicted labels by cluster",
                                  f'<p class="note">{_esc(self.dots_missing)}</p>'))
        body = (_png(draw_shares(self.shares), "share of cells by how they were labelled")
                + html_table(self.shares.rename_axis("cells were"))
                + f'<p class="note">From <code>{k}_label</code> ("{UNASSIGNED}"), <code>{k}_probability</code> '
                  f'(missing: no counts) and <code>{k}_coarse_ontology_term_id</code> against '
                  f'<code>{k}_cell_type_ontology_term_id</code> (a coarse label differs from the class: the lowest '
                  f'common ontology ancestor of the likeliest classes, given above the uncertainty threshold and '
                  f'below the minimum probability).</p>')
        if len(self.coarse):
            body += "<h3>Most frequent coarse labels</h3>" + html_table(self.coarse)
        parts.append(_section("labelling", "Unassigned and coarse-labelled cells", body))
        c = self.coverage
        cov = c.get("gene_coverage", float("nan"))
        warn = '<p class="warn">Below half of the model\'s genes: labels may be unreliable.</p>' \
            if cov == cov and cov < 0.5 else ""
        cov_table = pd.DataFrame({"": [f"{cov:.1%}", f"{c.get('genes_found', 0):,} of {c.get('model_genes', 0):,}",
                                       f"{c.get('genes_missing', 0):,}", str(c.get("gene_ids", "")),
                                       f"{c.get('matrix', '')} ({c.get('values', '')})"]},
                                 index=["gene coverage", "model genes found", "absent (zero-filled)",
                                        "genes matched by", "counts read from"])
        parts.append(_section("coverage", "Gene coverage", warn + html_table(cov_table, header=False)))
        for i, s in enumerate(self.sections):
            body = (f'<p class="note">{_esc(s.note)}</p>' if s.note else "") \
                + (html_table(s.rows, index=isinstance(s.rows, pd.DataFrame)) if s.rows is not None else "") \
                + (markdown_html(s.markdown) if s.markdown else "")
            parts.append(_section(f"extra-{i}", s.title, body))
        links = "".join(f'<a href="#{a}">{_esc(t)}</a>' for a, t in nav)
        return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
                f"<title>{_esc(self.title)}</title><style>{CSS}</style></head><body>\n"
                f"<h1>{_esc(self.title)}</h1><nav>{links}</nav>\n" + "\n".join(parts) + "\n</body></html>\n")


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
