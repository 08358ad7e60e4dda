"""Annotate an AnnData in memory, or an .h5ad file streamed block by block, with a registered model.

The output is written only when every cell was annotated: an .h5ad output is a copy of the input with
new obs columns (written through h5py into a temporary file that is renamed into place, so X is never
loaded whole); .csv and .parquet outputs hold the new columns indexed by obs_names.

CellTypist's options have counterparts here (docs/annotate.md has the column mapping): a minimum
probability below which a cell is "Unassigned", a restriction to some classes, majority voting over
(Leiden or given) clusters, the per-class probability matrix, and a minimum gene coverage below which the
input is refused. The gene coverage is always reported.

``compare_with`` runs a second model in the same pass over the cells (each model reads its own genes from the
same block) and says per cell how the labels changed (:mod:`sctab.annotation.changes`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from sctab.annotation.annotator import UNASSIGNED, Annotator, to_model_space
from sctab.annotation.errors import AnnotateError
from sctab.annotation.resolve import load_annotator
from sctab.census.counts import (
    CountsSource,
    GeneMatch,
    LegacyH5ad,
    adata_matrices,
    check_block,
    choose_matrix,
    h5ad_matrices,
    match_genes,
)

OUTPUT_SUFFIXES = (".h5ad", ".csv", ".parquet")
DEFAULT_ONTOLOGY = "data/ontology/cl.obo"  # the project's; without it compare_labels uses the model's release
LOW_COVERAGE = 0.5  # below it a warning is logged even when no minimum is asked for
log = logging.getLogger(__name__)


@dataclass
class AnnotationReport:
    """What happened: which matrix and genes were used, how many cells, how fast."""

    model: str
    model_kind: str
    n_cells: int
    matrix: str
    values: str
    gene_ids: str
    model_genes: int
    genes_found: int
    genes_missing: int
    unassigned_cells: int
    uncertain_cells: int
    seconds: float
    gene_coverage: float = float("nan")      # genes_found / model_genes
    min_probability: float = 0.0             # in use: below it a cell is 'Unassigned'
    min_probability_source: str = "none"     # given, or the model's default (and its rule), or none
    below_min_probability: int = 0           # cells 'Unassigned' because of min_probability
    restricted_to: list | None = None        # the classes allowed by restrict_to (None: all)
    majority_voting: str | None = None       # how the cells were over-clustered (None: no voting)
    n_clusters: int | None = None
    compare_labels: str | None = None        # the obs column compared with the predictions (None: none)
    comparison: object = field(default=None, repr=False)  # its Comparison (sctab.annotation.compare)
    compare_with: str | None = None          # the model whose labels are the previous ones (None: none)
    previous_gene_coverage: float | None = None  # its genes found in the input / its genes
    changes: object = field(default=None, repr=False)     # its Changes (sctab.annotation.changes)

    @property
    def cells_per_s(self) -> float:
        return self.n_cells / self.seconds if self.seconds > 0 else float("nan")

    def as_dict(self) -> dict:
        """Fields as plain values for uns (h5ad cannot store None: unset options are left out)."""
        fields = asdict(replace(self, comparison=None, changes=None))  # each has its own uns entry
        return {k: v for k, v in {**fields, "cells_per_s": round(self.cells_per_s, 1)}.items() if v is not None}

    def summary(self) -> str:
        return (f"{self.n_cells:,} cells annotated with {self.model} ({self.model_kind}) in {self.seconds:.1f} s "
                f"({self.cells_per_s:,.0f} cells/s); counts from {self.matrix} ({self.values}); genes matched by "
                f"{self.gene_ids}: {self.genes_found:,} of the model's {self.model_genes:,} found (gene coverage "
                f"{self.gene_coverage:.1%}), {self.genes_missing:,} zero-filled; {self.uncertain_cells:,} cells "
                f"above the uncertainty threshold got a coarser label; {self.below_min_probability:,} cells below "
                f"the minimum probability {self.min_probability:g} ({self.min_probability_source}) and "
                f"{self.unassigned_cells:,} cells without counts on the model's genes are '{UNASSIGNED}'"
                + (f"; restricted to {len(self.restricted_to)} classes" if self.restricted_to is not None else "")
                + (f"; majority voting over {self.n_clusters} clusters ({self.majority_voting})"
                   if self.majority_voting else "")
                + (f"; labels of obs column {self.compare_labels!r} compared with the predictions"
                   if self.compare_labels else "")
                + (f"; compared with {self.compare_with} (gene coverage {self.previous_gene_coverage:.1%}): "
                   f"{self.n_cells - self.changes.totals['same']:,} cells changed label"
                   if self.changes is not None else ""))


def _as_annotator(model, trust_pickle: bool, uncertainty_threshold, min_probability=None,
                  restrict_to=None) -> Annotator:
    """The model loaded (or a given Annotator copied) with the call's settings; bad settings fail here,
    before any input is read."""
    if min_probability is not None and not 0.0 <= float(min_probability) <= 1.0:
        raise AnnotateError(f"min_probability must be between 0 and 1 (0 disables it), got {min_probability}")
    if isinstance(model, Annotator):
        ann = model if uncertainty_threshold is None else replace(model, uncertainty_threshold=uncertainty_threshold)
    else:
        ann = load_annotator(model, trust_pickle=trust_pickle, uncertainty_threshold=uncertainty_threshold)
    if min_probability is not None:
        ann = replace(ann, min_probability=float(min_probability))
    if restrict_to is not None:
        ann = ann.restrict([restrict_to] if isinstance(restrict_to, str) else list(restrict_to))
    return ann


@dataclass
class Streamed:
    """What one pass over the cells gives: the per-cell frame, and when asked, the probabilities (after any
    restriction) and the normalised values (for the over-clustering graph)."""

    frame: pd.DataFrame
    probabilities: np.ndarray | None = None
    normalised: object = None  # scipy CSR (cells, model genes) of log1p values
    previous: pd.DataFrame | None = None  # the compare_with model's per-cell frame


def _check_coverage(match: GeneMatch, n_model: int, min_gene_coverage: float | None, where: str,
                    whose: str = "the model's") -> float:
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


def _predict_stream(ann: Annotator, source: CountsSource, match: GeneMatch, batch_size: int,
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


@dataclass
class Voting:
    """Majority voting settings: clusters from an obs column, or Leiden at ``resolution`` (None: by cell count)."""

    column: str | None = None
    resolution: float | None = None
    min_prop: float = 0.0


def _cluster_column(obs: pd.DataFrame, column: str, where: str) -> np.ndarray:
    if column not in obs.columns:
        raise AnnotateError(f"over-clustering column {column!r} is not in the obs of {where} (its columns: "
                            f"{', '.join(map(str, obs.columns)) or 'none'})")
    values = obs[column]
    if values.isna().any():
        raise AnnotateError(f"over-clustering column {column!r} of {where} has {int(values.isna().sum())} missing "
                            f"value(s); every cell needs a cluster")
    return values.astype(str).to_numpy()


def _vote(ann: Annotator, streamed: Streamed, voting: Voting, clusters: np.ndarray | None,
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


def _floor_source(ann: Annotator) -> str:
    if ann.min_probability is not None:
        return "given"
    rec = ann.bundle.meta.get("min_probability")
    if rec:
        return (f"the model's default: precision >= {rec.get('precision_target')} on its validation split"
                + ("" if rec.get("reached", True) else ", not reached, so none"))
    return "none"


def _report(ann: Annotator, source: CountsSource, match: GeneMatch, out: pd.DataFrame, seconds: float, *,
            coverage: float, voting: tuple[str, int] | None = None) -> AnnotationReport:
    no_counts = out["probability"].isna().to_numpy()
    classes = ann.bundle.space.classes
    return AnnotationReport(
        model=ann.description.get("model", str(ann.bundle.path)), model_kind=ann.bundle.kind, n_cells=len(out),
        matrix=source.matrix.where, values=source.values, gene_ids=match.id_type, model_genes=len(ann.genes),
        genes_found=match.n_found, genes_missing=match.n_missing, unassigned_cells=int(no_counts.sum()),
        uncertain_cells=int((out["uncertainty"] > ann.threshold).sum()), seconds=seconds,
        gene_coverage=float(coverage), min_probability=ann.probability_floor,
        min_probability_source=_floor_source(ann),
        below_min_probability=int(((out["label"] == UNASSIGNED).to_numpy() & ~no_counts).sum()),
        restricted_to=None if ann.allowed is None else [c for c, a in zip(classes, ann.allowed) if a],
        majority_voting=None if voting is None else voting[0], n_clusters=None if voting is None else voting[1])


def _prefixed(frame: pd.DataFrame, key_added: str) -> pd.DataFrame:
    return frame.rename(columns={c: f"{key_added}_{c}" for c in frame.columns})


def _probability_table(ann: Annotator, probs: np.ndarray, index, key_added: str) -> pd.DataFrame:
    """The probability matrix as table columns ``<key>_probabilities:<class label>``."""
    columns = [f"{key_added}_probabilities:{c}" for c in ann.bundle.space.classes]
    return pd.DataFrame(probs, index=index, columns=columns)


def _probability_classes(ann: Annotator) -> dict:
    """uns entry naming the columns of obsm['<key>_probabilities']."""
    return {"classes": list(ann.bundle.space.classes), "ontology_term_ids": list(ann.bundle.class_ids)}


def _voting(majority_voting: bool, over_clustering: str | None, resolution: float | None,
            min_prop: float) -> Voting | None:
    """Voting settings, or None; a cluster column implies voting (it is only used for voting)."""
    if not (majority_voting or over_clustering):
        return None
    if not 0.0 <= min_prop <= 1.0:
        raise AnnotateError(f"min_prop must be between 0 and 1, got {min_prop}")
    if resolution is not None and resolution <= 0:
        raise AnnotateError(f"the over-clustering resolution must be > 0, got {resolution}")
    return Voting(column=over_clustering, resolution=resolution, min_prop=min_prop)


def _user_labels(obs: pd.DataFrame, column: str | None, ann: Annotator, label_map, ontology, where: str):
    """(mapped user labels, ontology) for ``compare_labels``, or (None, None); checked before any prediction,
    so a missing column or labels that map to nothing fail before the cells are read."""
    if column is None:
        return None, None
    from sctab.annotation.compare import load_ontology, map_user_labels, read_label_map

    if column not in obs.columns:
        raise AnnotateError(f"--compare-labels: obs column {column!r} is not in {where} (its columns: "
                            f"{', '.join(map(str, obs.columns)) or 'none'})")
    mapping = read_label_map(label_map)
    onto = load_ontology(ontology, ann.bundle.meta.get("ontology_version"))
    absent = [c for c in ann.bundle.class_ids if c not in onto]
    if absent:
        raise AnnotateError(f"--compare-labels: the Cell Ontology {onto.path} ({onto.version}) lacks {len(absent)} of "
                            f"the model's classes, e.g. {absent[:3]} (the model was built with "
                            f"{ann.bundle.meta.get('ontology_version')}); give that release with --ontology")
    return map_user_labels(obs[column].to_numpy(), onto, mapping, column=column, where=where), onto


def _model_name(ann: Annotator) -> str:
    return str(ann.description.get("model", ann.bundle.path))


def _previous_model(compare_with, ann: Annotator, trust_pickle: bool, uncertainty_threshold, min_probability,
                    restrict_to, ontology):
    """(the ``compare_with`` model with the call's label settings, the ontology of the changes), or (None, None);
    checked before any cell is read: it must load, share genes with ``ann`` and have its classes in the ontology."""
    if compare_with is None:
        return None, None
    from sctab.annotation.changes import check_classes
    from sctab.annotation.compare import load_ontology

    try:
        prev = _as_annotator(compare_with, trust_pickle, uncertainty_threshold, min_probability, restrict_to)
    except AnnotateError as e:
        raise AnnotateError(f"--compare-with: {e}") from e
    if not set(prev.genes) & set(ann.genes):
        raise AnnotateError(f"--compare-with: {_model_name(prev)} ({len(prev.genes):,} genes, e.g. "
                            f"{', '.join(prev.genes[:3])}) and {_model_name(ann)} ({len(ann.genes):,} genes, e.g. "
                            f"{', '.join(ann.genes[:3])}) share no genes: their labels would come from disjoint "
                            f"measurements of the cells; compare models of a common gene space")
    version = ann.bundle.meta.get("ontology_version") or prev.bundle.meta.get("ontology_version")
    try:
        onto = load_ontology(ontology, version)
    except AnnotateError as e:
        raise AnnotateError(str(e).replace("comparing labels", "--compare-with")) from e
    check_classes(onto, {_model_name(ann): list(ann.bundle.class_ids), _model_name(prev): list(prev.bundle.class_ids)})
    return prev, onto


def _match_previous(prev: Annotator | None, source: CountsSource, gene_column: str | None,
                    min_gene_coverage: float | None, where: str) -> tuple[GeneMatch | None, float | None]:
    """The ``compare_with`` model's genes in the file and their coverage, by the main model's rules."""
    if prev is None:
        return None, None
    whose = f"the --compare-with model {_model_name(prev)}'s"
    try:
        match = match_genes(source.matrix.var, prev.genes, gene_column=gene_column, where=where)
    except AnnotateError as e:
        raise AnnotateError(f"--compare-with {_model_name(prev)}: {e}") from e
    return match, _check_coverage(match, len(prev.genes), min_gene_coverage, where, whose)


def _changes(ann: Annotator, prev: Annotator, onto, streamed: Streamed):
    """Add the previous label, its id and the change to the frame; the Changes."""
    from sctab.annotation.changes import compare_models

    frame, before = streamed.frame, streamed.previous
    result = compare_models(before, frame, onto, previous_model=_model_name(prev), new_model=_model_name(ann))
    frame["previous_label"] = before["label"].to_numpy()
    frame["previous_cell_type_ontology_term_id"] = before["cell_type_ontology_term_id"].to_numpy()
    frame["change"] = result.change.to_numpy()
    return result


def _compare(ann: Annotator, user, onto, frame: pd.DataFrame):
    """Add the per-cell agreement column to ``frame``; the Comparison."""
    from sctab.annotation.compare import compare

    result = compare(user, frame["cell_type_ontology_term_id"].to_numpy(), frame["label"].to_numpy(),
                     list(ann.bundle.class_ids), onto, class_labels=list(ann.bundle.space.classes))
    frame["agreement"] = result.agreement.to_numpy()
    return result


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
    voting = _voting(majority_voting, over_clustering, resolution, min_prop)
    ann = _as_annotator(model, trust_pickle, uncertainty_threshold, min_probability, restrict_to)
    onto_path = DEFAULT_ONTOLOGY if ontology is None else ontology
    prev, change_onto = _previous_model(compare_with, ann, trust_pickle, uncertainty_threshold, min_probability,
                                        restrict_to, onto_path)
    t0 = time.perf_counter()
    user, onto = _user_labels(adata.obs, compare_labels, ann, label_map, onto_path, "the AnnData")
    clusters = _cluster_column(adata.obs, voting.column, "the AnnData") if voting and voting.column else None
    graph = adata.obsp["connectivities"] if voting and clusters is None and "connectivities" in adata.obsp else None
    obs_names, matrices = adata_matrices(adata)
    source = choose_matrix(obs_names, matrices, layer=layer, from_log1p=from_log1p,
                           allow_non_integer=allow_non_integer, source="the AnnData")
    match = match_genes(source.matrix.var, ann.genes, gene_column=gene_column, where="the AnnData")
    coverage = _check_coverage(match, len(ann.genes), min_gene_coverage, "the AnnData")
    prev_match, prev_coverage = _match_previous(prev, source, gene_column, min_gene_coverage, "the AnnData")
    streamed = _predict_stream(ann, source, match, batch_size, progress, keep_probabilities=probabilities,
                               keep_normalised=voting is not None and clusters is None and graph is None,
                               previous=None if prev is None else (prev, prev_match))
    vote = _vote(ann, streamed, voting, clusters, graph) if voting else None
    out = streamed.frame
    result = _compare(ann, user, onto, out) if user is not None else None
    changes = _changes(ann, prev, change_onto, streamed) if prev is not None else None
    report = _report(ann, source, match, out, time.perf_counter() - t0, coverage=coverage, voting=vote)
    report.compare_labels, report.comparison = compare_labels if user is not None else None, result
    if changes is not None:
        report.compare_with, report.previous_gene_coverage, report.changes = _model_name(prev), prev_coverage, changes
    target = adata.copy() if copy else adata
    for c, v in _prefixed(out, key_added).items():
        target.obs[c] = v.to_numpy()
    if probabilities:
        target.obsm[f"{key_added}_probabilities"] = streamed.probabilities
        target.uns[f"{key_added}_probabilities"] = _probability_classes(ann)
    target.uns[f"{key_added}_annotation"] = report.as_dict()
    if result is not None:
        target.uns[f"{key_added}_compare"] = result.as_uns()
    if changes is not None:
        target.uns[f"{key_added}_changes"] = changes.as_uns()
    return target


@contextlib.contextmanager
def _output_tmp(out: Path):
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.tmp-", dir=out.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _write_h5ad(src: Path, out: Path, frame: pd.DataFrame, report: AnnotationReport, key_added: str,
                extra_uns: dict | None = None, obsm: dict | None = None) -> None:
    import anndata.io as aio
    import h5py

    with _output_tmp(out) as tmp:
        shutil.copyfile(src, tmp)
        with h5py.File(tmp, "r+") as f:
            obs = aio.read_elem(f["obs"])
            for c, v in _prefixed(frame, key_added).items():
                obs[c] = v.to_numpy()
            del f["obs"]
            aio.write_elem(f, "obs", obs)
            for group, items in (("uns", {f"{key_added}_annotation": report.as_dict(), **(extra_uns or {})}),
                                 ("obsm", obsm or {})):
                if not items:
                    continue
                if group not in f:
                    aio.write_elem(f, group, {})
                for name, value in items.items():
                    if name in f[group]:
                        del f[group][name]
                    aio.write_elem(f[group], name, value)
        _check_readable(tmp)


def _check_readable(path: Path) -> None:
    """The copy must open as an AnnData (everything but X, which was streamed whole already): a damaged
    group elsewhere in the input would otherwise pass through into an output nobody can read."""
    import warnings

    import anndata

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        adata = anndata.read_h5ad(path, backed="r")
    try:
        adata.X  # opens the element; a damaged group raises here
    finally:
        adata.file.close()


def _read_legacy(src: Path):
    """Old (pre-0.7) h5ad files: anndata converts them on reading; they are small enough to load."""
    import warnings

    import anndata

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return anndata.read_h5ad(src)
    except Exception as e:
        raise AnnotateError(f"cannot read {src} as an AnnData file: {e}") from e


def _file_obs(f, legacy) -> pd.DataFrame:
    import anndata.io as aio

    return legacy.obs if legacy is not None else aio.read_elem(f["obs"])


def _file_graph(f, legacy):
    """An existing neighbour graph of the file (obsp['connectivities']), or None."""
    import anndata.io as aio

    if legacy is not None:
        return legacy.obsp["connectivities"] if "connectivities" in legacy.obsp else None
    if "obsp" in f and "connectivities" in f["obsp"]:
        return aio.read_elem(f["obsp"]["connectivities"])
    return None


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
    import h5py

    src, out = Path(input), Path(output)
    if out.suffix not in OUTPUT_SUFFIXES:
        raise AnnotateError(f"output {out} must end in one of {', '.join(OUTPUT_SUFFIXES)}")
    if not src.is_file():
        raise AnnotateError(f"input file {src} does not exist")
    if src.suffix != ".h5ad":
        raise AnnotateError(f"input {src} is not an .h5ad file (convert other formats with anndata/scanpy first)")
    voting = _voting(majority_voting, over_clustering, resolution, min_prop)
    ann = _as_annotator(model, trust_pickle, uncertainty_threshold, min_probability, restrict_to)
    onto_path = DEFAULT_ONTOLOGY if ontology is None else ontology
    prev, change_onto = _previous_model(compare_with, ann, trust_pickle, uncertainty_threshold, min_probability,
                                        restrict_to, onto_path)
    t0 = time.perf_counter()
    try:
        f = h5py.File(src, "r")
    except OSError as e:
        raise AnnotateError(f"cannot open {src} as HDF5 (truncated or not an h5ad file?): {e}") from e
    legacy = None
    clusters = graph = None
    with f:
        try:
            try:
                obs_names, matrices = h5ad_matrices(f, src)
            except LegacyH5ad:
                legacy = _read_legacy(src)
                obs_names, matrices = adata_matrices(legacy)
            obs = _file_obs(f, legacy) if compare_labels is not None or (voting and voting.column) else None
            user, onto = _user_labels(obs, compare_labels, ann, label_map, onto_path, str(src))
            if voting and voting.column:
                clusters = _cluster_column(obs, voting.column, str(src))
            elif voting:
                graph = _file_graph(f, legacy)
            source = choose_matrix(obs_names, matrices, layer=layer, from_log1p=from_log1p,
                                   allow_non_integer=allow_non_integer, source=str(src))
            match = match_genes(source.matrix.var, ann.genes, gene_column=gene_column, where=str(src))
            coverage = _check_coverage(match, len(ann.genes), min_gene_coverage, str(src))
            prev_match, prev_coverage = _match_previous(prev, source, gene_column, min_gene_coverage, str(src))
            streamed = _predict_stream(ann, source, match, batch_size, progress, keep_probabilities=probabilities,
                                       keep_normalised=voting is not None and clusters is None and graph is None,
                                       previous=None if prev is None else (prev, prev_match))
        except AnnotateError:
            raise
        except (OSError, RuntimeError, KeyError, ValueError, TypeError) as e:  # damaged HDF5 structure
            raise AnnotateError(f"cannot read {src}: the file is damaged or not a valid h5ad ({e})") from e
    vote = _vote(ann, streamed, voting, clusters, graph) if voting else None
    frame = streamed.frame
    result = _compare(ann, user, onto, frame) if user is not None else None
    changes = _changes(ann, prev, change_onto, streamed) if prev is not None else None
    report = _report(ann, source, match, frame, time.perf_counter() - t0, coverage=coverage, voting=vote)
    report.compare_labels, report.comparison = compare_labels if user is not None else None, result
    if changes is not None:
        report.compare_with, report.previous_gene_coverage, report.changes = _model_name(prev), prev_coverage, changes
    extra_uns = {f"{key_added}_probabilities": _probability_classes(ann)} if probabilities else {}
    if result is not None:
        extra_uns[f"{key_added}_compare"] = result.as_uns()
    if changes is not None:
        extra_uns[f"{key_added}_changes"] = changes.as_uns()
    obsm = {f"{key_added}_probabilities": streamed.probabilities} if probabilities else {}
    with _side_files(out, result, changes):
        _write_output(src, out, frame, report, key_added, legacy, extra_uns, obsm, ann, streamed, probabilities)
    return report


@contextlib.contextmanager
def _side_files(out: Path, result, changes):
    """Write ``<OUT stem>.compare.json``/``.md`` (``result``) and ``.changes.json``/``.md`` (``changes``) into
    place only if the block (the main output) succeeds."""
    from sctab.annotation.changes import changes_paths
    from sctab.annotation.compare import compare_paths

    with contextlib.ExitStack() as stack:
        for doc, paths in ((result, compare_paths), (changes, changes_paths)):
            if doc is None:
                continue
            js, md = paths(out)
            stack.enter_context(_output_tmp(js)).write_text(doc.to_json())
            stack.enter_context(_output_tmp(md)).write_text(doc.to_markdown())
        yield


def _write_output(src: Path, out: Path, frame: pd.DataFrame, report: AnnotationReport, key_added: str, legacy,
                  extra_uns: dict, obsm: dict, ann: Annotator, streamed: Streamed, probabilities: bool) -> None:
    if out.suffix == ".h5ad" and legacy is not None:
        for c, v in _prefixed(frame, key_added).items():
            legacy.obs[c] = v.to_numpy()
        legacy.uns[f"{key_added}_annotation"] = report.as_dict()
        legacy.uns.update(extra_uns)
        for k, v in obsm.items():
            legacy.obsm[k] = v
        with _output_tmp(out) as tmp:
            legacy.write_h5ad(tmp)
    elif out.suffix == ".h5ad":
        try:
            _write_h5ad(src, out, frame, report, key_added, extra_uns=extra_uns, obsm=obsm)
        except Exception as e:  # damaged parts of the copy (h5py and anndata raise many kinds)
            raise AnnotateError(f"cannot write the annotated copy of {src}: the file is damaged or not a valid "
                                f"h5ad ({e}); nothing was written to {out}") from e
    else:
        with _output_tmp(out) as tmp:
            table = _prefixed(frame, key_added)
            if probabilities:
                table = pd.concat([table, _probability_table(ann, streamed.probabilities, table.index, key_added)],
                                  axis=1)
            table.index.name = "obs_names"
            if out.suffix == ".csv":
                table.to_csv(tmp)
            else:
                table.to_parquet(tmp)
