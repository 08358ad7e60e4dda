"""sctab.ontology: the Cell Ontology bundled with cellxgene-ontology-guide, as OBO and as fast queries."""

from sctab.ontology.bundled import NATIVE_CELL, ROOT_CELL, bundled_cl_versions, load_bundled_cl
from sctab.ontology.cell_ontology import CellOntology, load_cell_ontology
from sctab.ontology.obo import write_cl_obo

__all__ = [
    "NATIVE_CELL",
    "ROOT_CELL",
    "CellOntology",
    "bundled_cl_versions",
    "load_bundled_cl",
    "load_cell_ontology",
    "write_cl_obo",
]
