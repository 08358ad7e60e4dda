"""One pass over the cells and everything after it, shared by ``annotate`` (in memory) and ``annotate_file``
(streamed from an .h5ad): the model's genes matched and their coverage checked, each block read once and
predicted (by the ``compare_with`` model too, on its own genes), then majority voting, the comparison with the
cells' own labels, the changes against the previous model and the report. The two entry points differ only in
how they open their input and write their output (:mod:`sctab.annotation.api`,
:mod:`sctab.annotation.outputs`).
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd

from sctab.annotation.annotation_report import AnnotationReport, build_report
from sctab.annotation.annotator import Annotator, to_model_space
from sctab.annotation.errors import AnnotateError
from sctab.annotation.settings import Settings, Voting, model_name
from sctab.census.counts import CountsSource, GeneMatch, check_block, match_genes

LOW_COVERAGE = 0.5  # below it a warning is logged even when no minimum is asked for
log = logging.getLogger(__name__)


@dataclass
class Streamed:
    """What one pass over the cells gives: the per-cell frame, and when asked, the probabilities (after any
    restriction) and the normalised values (for the over-clustering graph)."""

    frame: pd.DataFrame
    probabilities: np.ndarray | None = None
    normalised: object = None  # scipy CSR (cells, model genes) of log1p values
    previous: pd.DataFrame | None = None  # the compare_with model's per-cell frame


def annotate_cells(s: Settings, source: CountsSource, where: str, t0: float, *, user=None, onto=None,
                   clusters: np.ndarray | None = None, graph=None,
                   reading=contextlib.nullcontext) -> tuple[Streamed, AnnotationReport]:
    """Predict the cells of ``source`` and finish: vote, compare, changes, report (timed from ``t0``).

    ``user``/``onto``: the mapped labels of ``compare_labels``; ``clusters``: a given over-clustering;
    ``graph``: an existing neighbour graph. ``reading`` is entered around everything that reads the input
    (annotate_file turns a damaged file's errors into an AnnotateError there)."""
    ann, prev = s.ann, s.previous
    with reading():
        match = match_genes(source.matrix.var, ann.genes, gene_column=s.gene_column, where=where)
        coverage = check_coverage(match, len(ann.genes), s.min_gene_coverage, where)
        prev_match, prev_coverage = match_previous(prev, source, s.gene_column, s.min_gene_coverage, where)
        streamed = predict_stream(ann, source, match, s.batch_size, s.progress, keep_probabilities=s.probabilities,
                                  keep_normalised=s.voting is not None and clusters is None and graph is None,
                                  previous=None if prev is None else (prev, prev_match))
    vote = majority_voting(ann, streamed, s.voting, clusters, graph) if s.voting else None
    frame = streamed.frame
    result = compare_labels(ann, user, onto, frame) if user is not None else None
    changes = label_changes(ann, prev, s.change_ontology, streamed) if prev is not None else None
    report = build_report(ann, source, match, frame, time.perf_counter() - t0, coverage=coverage, voting=vote)
    report.compare_labels, report.comparison = s.compare_labels if user is not None else None, result
    if changes is not None:
        report.compare_with, report.previous_gene_coverage, report.changes = model_name(prev), prev_coverage, changes
    return streamed, report


def check_coverage(match: GeneMatch, n_model: int, min_gene_coverage: float | None, where: str,
                   whose: str = "the model's") -> float:
    """The fraction of the model's genes found; below ``min_gene_coverage`` the input is refused."""
    coverage = match.n_found / n_model if n_model else 0.0
    log.info("%s covers %d of %s %d genes (%.1f%%)", where, match.n_found, whose, n_model, 100 * coverage)
    if min_gene_coverage is not None and not 0.0 <= float(min_gene_coverage) <= 1.0:
        raise AnnotateError(f"min_gene_coverage is a fraction between 0 and 1, got {min_gene_coverage}")
    if min_gene_coverage is not None and coverage < float(min_gene_coverage):
        raise AnnotateError(f"{where} covers {match.n_found:,} of {whose} {n_model:,} genes ({coverage:.1%}), "
                            f"below the minimum gene coverage {float(min_gene_coverage):.1%}: its cells would be "
                            f"labelled from too little of what the model reads. Check the gene ids "
                            f"(--gene-column) or lower --min-gene-coverage; nothing was written")
    if coverage < LOW_COVERAGE:
        log.warning("%s covers only %.1f%% of %s genes; labels may be unreliable", where, 100 * coverage, whose)
    return coverage


def match_previous(prev: Annotator | None, source: CountsSource, gene_column: str | None,
                   min_gene_coverage: float | None, where: str) -> tuple[GeneMatch | None, float | None]:
    """The ``compare_with`` model's genes in the file and their coverage, by the main model's rules."""
    if prev is None:
        return None, None
    whose = f"the --compare-with model {model_name(prev)}'s"
    try:
        match = match_genes(source.matrix.var, prev.genes, gene_column=gene_column, where=where)
    except AnnotateError as e:
        raise AnnotateError(f"--compare-with {model_name(prev)}: {e}") from e
    return match, check_coverage(match, len(prev.genes), min_gene_coverage, where, whose)


def predict_stream(ann: Annotator, source: CountsSource, match: GeneMatch, batch_size: int,
                   progress: bool, *, keep_probabilities: bool = False, keep_normalised: bool = False,
                   previous: tuple[Annotator, GeneMatch] | None = None) -> Streamed:
    """One pass over the cells: each block read once, predicted by ``ann`` and by the ``previous`` model too
    (each on its own genes of the same block)."""
    import scipy.sparse as sp
    from tqdm.auto import tqdm

    if batch_size < 1:
        raise AnnotateError(f"batch_size must be >= 1, got {batch_size}")
    frames, probs, xs, before = [], [], [], []
    with tqdm(total=source.n_obs, unit="cells", desc="annotating", disable=not progress, leave=False) as bar:
        for a in range(0, source.n_obs, batch_size):
            b = min(a + batch_size, source.n_obs)
            try:
                block = source.matrix.read(a, b)
            except AnnotateError:
                raise
            except Exception as e:  # truncated chunks, unreadable compression, wrong dtypes
                raise AnnotateError(f"cannot read rows {a}-{b - 1} of {source.matrix.where}: {e}") from e
            if block.dtype.kind not in "biuf":
                raise AnnotateError(f"{source.matrix.where} holds {block.dtype} values, not numbers")
            block = block.astype(np.float64, copy=False)
            check_block(block, source.values, (a, b), source.matrix.where)
            if source.values == "log1p":
                block = block.copy()
                np.expm1(block.data, out=block.data)
            p, ok, x = ann.predict_block(to_model_space(block, match.columns))
            frames.append(ann.frame(p, ok))
            if previous is not None:
                other, other_match = previous
                before.append(other.frame(*other.predict_block(to_model_space(block, other_match.columns))[:2]))
            if keep_probabilities:
                probs.append(p)
            if keep_normalised:
                xs.append(sp.csr_matrix(x))
            bar.update(b - a)
    out = pd.concat(frames, ignore_index=True)
    out.index = pd.Index(source.obs_names.astype(str), name=None)
    n_classes = ann.bundle.space.n_classes
    prev = pd.concat(before, ignore_index=True).set_axis(out.index) if previous is not None else None
    return Streamed(frame=out, previous=prev,
                    probabilities=(np.concatenate(probs) if probs else np.zeros((0, n_classes), np.float32))
                    if keep_probabilities else None,
                    normalised=(sp.vstack(xs).tocsr() if xs else sp.csr_matrix((0, len(ann.genes)), dtype=np.float32))
                    if keep_normalised else None)


def majority_voting(ann: Annotator, streamed: Streamed, voting: Voting, clusters: np.ndarray | None,
                    connectivities) -> tuple[str, int]:
    """Add over_clustering, majority_voting and its ontology id to the frame; (how, number of clusters)."""
    from sctab.annotation.voting import majority_vote, over_cluster

    frame = streamed.frame
    if clusters is not None:
        how = f"clusters from obs column {voting.column!r}"
    else:
        if connectivities is not None and connectivities.shape != (len(frame), len(frame)):
            connectivities = None  # a graph of other cells (e.g. a subset was written): build our own
        clusters, info = over_cluster(streamed.normalised, connectivities=connectivities,
                                      resolution=voting.resolution)
        how = info["over_clustering"]
    ids = dict(zip(ann.bundle.space.classes, ann.bundle.class_ids))
    votes = majority_vote(frame["label"].to_numpy(), clusters, min_prop=voting.min_prop)
    frame["over_clustering"] = np.asarray(clusters, dtype=object).astype(str).astype(object)
    frame["majority_voting"] = votes
    frame["majority_voting_ontology_term_id"] = [ids.get(v, "") for v in votes]
    return how, int(pd.Series(clusters).nunique())


def label_changes(ann: Annotator, prev: Annotator, onto, streamed: Streamed):
    """Add the previous label, its id and the change to the frame; the Changes."""
    from sctab.annotation.changes import compare_models

    frame, before = streamed.frame, streamed.previous
    result = compare_models(before, frame, onto, previous_model=model_name(prev), new_model=model_name(ann))
    frame["previous_label"] = before["label"].to_numpy()
    frame["previous_cell_type_ontology_term_id"] = before["cell_type_ontology_term_id"].to_numpy()
    frame["change"] = result.change.to_numpy()
    return result


def compare_labels(ann: Annotator, user, onto, frame: pd.DataFrame):
    """Add the per-cell agreement column to ``frame``; the Comparison."""
    from sctab.annotation.compare import compare

    result = compare(user, frame["cell_type_ontology_term_id"].to_numpy(), frame["label"].to_numpy(),
                     list(ann.bundle.class_ids), onto, class_labels=list(ann.bundle.space.classes))
    frame["agreement"] = result.agreement.to_numpy()
    return result
