"""The public API of annotation: ``annotate`` an AnnData in memory, or ``annotate_file`` an .h5ad file streamed
block by block, with a registered model.

The output is written only when every cell was annotated: an .h5ad output is a copy of the input with
new obs columns (X is never loaded whole); .csv and .parquet outputs hold the new columns indexed by obs_names
(:mod:`sctab.annotation.outputs`).

CellTypist's options have counterparts here (docs/annotate.md has the column mapping): a minimum
probability below which a cell is "Unassigned", a restriction to some classes, majority voting over
(Leiden or given) clusters, the per-class probability matrix, and a minimum gene coverage below which the
input is refused. The gene coverage is always reported.

``compare_with`` runs a second model in the same pass over the cells (each model reads its own genes from the
same block) and says per cell how the labels changed (:mod:`sctab.annotation.changes`).

This module only opens the input and hands over: the options are checked in :mod:`sctab.annotation.settings`,
the pass over the cells and what follows it (vote, comparisons, report) is :mod:`sctab.annotation.predict`,
shared by both entry points.
"""

from __future__ import annotations

import time
from pathlib import Path

from sctab.annotation.annotation_report import AnnotationReport
from sctab.annotation.errors import AnnotateError
from sctab.annotation.inputs import check_input, file_graph, file_obs, open_h5, read_errors, read_legacy
from sctab.annotation.outputs import OUTPUT_SUFFIXES, add_to_adata, write_file
from sctab.annotation.predict import annotate_cells
from sctab.annotation.settings import cluster_column, settle_call, user_labels
from sctab.census.counts import LegacyH5ad, adata_matrices, choose_matrix, h5ad_matrices

__all__ = ["AnnotationReport", "annotate", "annotate_file"]


def annotate(adata, model=None, *, layer: str | None = None, gene_column: str | None = None,
             from_log1p: bool = False, allow_non_integer: bool = False, batch_size: int = 4096,
             uncertainty_threshold: float | None = None, key_added: str = "sctab", copy: bool = False,
             trust_pickle: bool = False, progress: bool = True, min_probability: float | None = None,
             restrict_to=None, majority_voting: bool = False, over_clustering: str | None = None,
             resolution: float | None = None, min_prop: float = 0.0, min_gene_coverage: float | None = None,
             probabilities: bool = False, compare_labels: str | None = None, label_map=None, ontology=None,
             compare_with=None):
    """Annotate ``adata`` with a scTab model, as scanpy/CellTypist users expect.

    Adds ``obs[f"{key_added}_label"]``, ``_cell_type_ontology_term_id``, ``_probability``,
    ``_uncertainty``, ``_coarse_label`` and ``_coarse_ontology_term_id``, and
    ``uns[f"{key_added}_annotation"]`` (what was used, gene coverage included). Returns the annotated
    AnnData (a copy when ``copy=True``). ``model`` is a models:/ URI, a model folder or a loaded
    :class:`Annotator`; None: the registry's default model (:func:`sctab.annotation.resolve.default_model_uri`).

    CellTypist's options: ``min_probability`` (``p_thres``; None: the model's default, 0: off) labels cells
    below it "Unassigned"; ``restrict_to`` (labels or CL ids) renormalises over those classes;
    ``majority_voting`` adds ``_over_clustering``, ``_majority_voting`` and its ontology id (clusters from
    obs column ``over_clustering`` if given, else Leiden at ``resolution``, default by cell count; an
    existing ``obsp['connectivities']`` is used as the graph); ``probabilities`` adds
    ``obsm[f"{key_added}_probabilities"]`` with the classes in ``uns[f"{key_added}_probabilities"]``;
    ``min_gene_coverage`` refuses input covering a smaller fraction of the model's genes.

    ``compare_labels`` names an obs column of the cells' own labels (CL ids, or free text mapped by CL label
    or exact synonym, ``label_map`` a dict or YAML file of label: CL id for the rest): adds
    ``obs[f"{key_added}_agreement"]`` (exact, model finer, model coarser, sibling, disagree, unassigned, not in
    the model, label not mapped) and ``uns[f"{key_added}_compare"]`` (per label: cells, CL id, relation to the
    model's classes, agreement shares, top predictions, ontology-corrected F1); see
    :mod:`sctab.annotation.compare`. ``ontology``: the Cell Ontology OBO (default ``data/ontology/cl.obo``,
    else the release the model was built with).

    ``compare_with`` names a second model (as ``model``; the same label settings apply to it) run in the same
    pass: adds ``obs[f"{key_added}_previous_label"]``, ``_previous_cell_type_ontology_term_id`` and ``_change``
    (same, finer, coarser, sibling, other: the new label against the previous one in the Cell Ontology) and
    ``uns[f"{key_added}_changes"]`` (cells per label pair); see :mod:`sctab.annotation.changes`.
    """
    import anndata

    if not isinstance(adata, anndata.AnnData):
        raise AnnotateError(f"annotate expects an AnnData, got {type(adata).__name__}; for a file use "
                            f"annotate_file or `sctab annotate`")
    s = settle_call(model, locals())
    t0 = time.perf_counter()
    user, onto = user_labels(adata.obs, compare_labels, s.ann, label_map, s.ontology, "the AnnData")
    clusters = cluster_column(adata.obs, s.voting.column, "the AnnData") if s.voting and s.voting.column else None
    graph = adata.obsp["connectivities"] if s.voting and clusters is None and "connectivities" in adata.obsp else None
    obs_names, matrices = adata_matrices(adata)
    source = choose_matrix(obs_names, matrices, layer=layer, from_log1p=from_log1p,
                           allow_non_integer=allow_non_integer, source="the AnnData")
    streamed, report = annotate_cells(s, source, "the AnnData", t0, user=user, onto=onto, clusters=clusters,
                                      graph=graph)
    target = adata.copy() if copy else adata
    add_to_adata(target, streamed, report, s.ann, key_added, probabilities)
    return target


def annotate_file(input: str | Path, output: str | Path, model=None, *, layer: str | None = None,
                  gene_column: str | None = None, from_log1p: bool = False, allow_non_integer: bool = False,
                  batch_size: int = 4096, uncertainty_threshold: float | None = None, key_added: str = "sctab",
                  trust_pickle: bool = False, progress: bool = True, min_probability: float | None = None,
                  restrict_to=None, majority_voting: bool = False, over_clustering: str | None = None,
                  resolution: float | None = None, min_prop: float = 0.0, min_gene_coverage: float | None = None,
                  probabilities: bool = False, compare_labels: str | None = None, label_map=None,
                  ontology=None, compare_with=None) -> AnnotationReport:
    """Annotate an .h5ad file without loading its matrix; write .h5ad, .csv or .parquet to ``output``.

    The options are :func:`annotate`'s. Majority voting over Leiden clusters without a graph in the file
    holds the normalised values of the model's genes (sparse) in memory to build one; with a cluster column
    or an existing graph the file stays streamed. Probabilities go to obsm (.h5ad) or to columns
    ``<key>_probabilities:<class>`` (.csv/.parquet). With ``compare_labels`` the comparison is also written
    beside the output as ``<OUT stem>.compare.json`` and ``.compare.md`` (and is ``report.comparison``);
    with ``compare_with`` the changes as ``<OUT stem>.changes.json`` and ``.changes.md`` (``report.changes``).
    """
    src, out = Path(input), Path(output)
    if out.suffix not in OUTPUT_SUFFIXES:
        raise AnnotateError(f"output {out} must end in one of {', '.join(OUTPUT_SUFFIXES)}")
    check_input(src)
    s = settle_call(model, locals())
    voting, where = s.voting, str(src)
    t0 = time.perf_counter()
    legacy = clusters = graph = None
    with open_h5(src) as f:
        with read_errors(src):
            try:
                obs_names, matrices = h5ad_matrices(f, src)
            except LegacyH5ad:
                legacy = read_legacy(src)
                obs_names, matrices = adata_matrices(legacy)
            obs = file_obs(f, legacy) if compare_labels is not None or (voting and voting.column) else None
            user, onto = user_labels(obs, compare_labels, s.ann, label_map, s.ontology, where)
            if voting and voting.column:
                clusters = cluster_column(obs, voting.column, where)
            elif voting:
                graph = file_graph(f, legacy)
            source = choose_matrix(obs_names, matrices, layer=layer, from_log1p=from_log1p,
                                   allow_non_integer=allow_non_integer, source=where)
        streamed, report = annotate_cells(s, source, where, t0, user=user, onto=onto, clusters=clusters, graph=graph,
                                          reading=lambda: read_errors(src))
    write_file(src, out, streamed, report, s.ann, key_added, probabilities, legacy)
    return report
