"""AnnotationReport: what one annotate call used and did (matrix, genes, settings, counts, speed).

Its own module because both entry points return it, the predict step fills it, and the HTML page and the
CLI read it; it holds no prediction code.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

import pandas as pd

from sctab.annotation.annotator import UNASSIGNED, Annotator
from sctab.census.counts import CountsSource, GeneMatch


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


def floor_source(ann: Annotator) -> str:
    """Where the minimum probability in use comes from: given, the model's default (and its rule), or none."""
    if ann.min_probability is not None:
        return "given"
    rec = ann.bundle.meta.get("min_probability")
    if rec:
        return (f"the model's default: precision >= {rec.get('precision_target')} on its validation split"
                + ("" if rec.get("reached", True) else ", not reached, so none"))
    return "none"


def build_report(ann: Annotator, source: CountsSource, match: GeneMatch, out: pd.DataFrame, seconds: float, *,
                 coverage: float, voting: tuple[str, int] | None = None) -> AnnotationReport:
    """The report of a pass whose per-cell frame is ``out``; comparison and changes are set by the caller."""
    no_counts = out["probability"].isna().to_numpy()
    classes = ann.bundle.space.classes
    return AnnotationReport(
        model=ann.description.get("model", str(ann.bundle.path)), model_kind=ann.bundle.kind, n_cells=len(out),
        matrix=source.matrix.where, values=source.values, gene_ids=match.id_type, model_genes=len(ann.genes),
        genes_found=match.n_found, genes_missing=match.n_missing, unassigned_cells=int(no_counts.sum()),
        uncertain_cells=int((out["uncertainty"] > ann.threshold).sum()), seconds=seconds,
        gene_coverage=float(coverage), min_probability=ann.probability_floor,
        min_probability_source=floor_source(ann),
        below_min_probability=int(((out["label"] == UNASSIGNED).to_numpy() & ~no_counts).sum()),
        restricted_to=None if ann.allowed is None else [c for c, a in zip(classes, ann.allowed) if a],
        majority_voting=None if voting is None else voting[0], n_clusters=None if voting is None else voting[1])
