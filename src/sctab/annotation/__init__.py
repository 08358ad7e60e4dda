"""Annotate a user's cells with a registered scTab model (CLI: ``sctab annotate``).

    import sctab
    adata = sctab.annotate(adata, model="models:/sctab-ensemble@champion")
    sctab.annotation.plot_annotation(adata)            # embedding coloured by label and by uncertainty
    sctab.annotate(adata, compare_labels="cell_type")   # + obs sctab_agreement, uns sctab_compare
    sctab.annotate(adata, model="models:/sctab-ensemble@challenger",
                   compare_with="models:/sctab-ensemble@champion")   # + obs sctab_change, uns sctab_changes
"""

from sctab.annotation.annotation_report import AnnotationReport
from sctab.annotation.annotator import COLUMNS, UNASSIGNED, Annotator
from sctab.annotation.api import annotate, annotate_file
from sctab.annotation.bundle import Bundle, write_bundle
from sctab.annotation.changes import CHANGES, Changes
from sctab.annotation.compare import AGREEMENT, Comparison
from sctab.annotation.errors import AnnotateError
from sctab.annotation.plots import plot_annotation
from sctab.annotation.resolve import DEFAULT_MODEL, load_annotator

__all__ = ["AGREEMENT", "CHANGES", "COLUMNS", "Changes", "UNASSIGNED", "Annotator", "AnnotateError",
           "AnnotationReport", "Bundle", "Comparison", "DEFAULT_MODEL", "annotate", "annotate_file", "load_annotator",
           "plot_annotation", "write_bundle"]
