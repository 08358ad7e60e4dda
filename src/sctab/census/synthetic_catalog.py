"""What the embedded census draws from: its tissues with their real Cell Ontology types, the assays, diseases
and development stages (the catalog of :mod:`sctab.census.synthetic`).

Each tissue lists its types with the lineage group whose program they express and their weight; some are
placed to exercise the paper's filters (a type in one dataset only, a coarse label that replaces two finer
ones, types with few ontology ancestors).
"""

from __future__ import annotations

from dataclasses import dataclass

TENX_ASSAYS = {
    "10x 3' v2": "EFO:0009899",
    "10x 3' v3": "EFO:0009922",
    "10x 5' v1": "EFO:0011025",
    "10x 5' v2": "EFO:0009900",
}
OTHER_ASSAYS = {"Smart-seq2": "EFO:0008931", "Drop-seq": "EFO:0008722", "microwell-seq": "EFO:0030002"}

STATES = ("resting", "activated", "cycling")


@dataclass(frozen=True)
class TypeSpec:
    """One annotated label: its CL id, sibling group (for state-dependent modules) and how it is drawn."""

    term: str
    group: str
    weight: float = 1.0
    # label written instead of the true type in some datasets (coarse annotation), e.g. T cell
    expression_of: tuple[str, ...] = ()


@dataclass(frozen=True)
class TissueSpec:
    tissue_general: str
    tissues: tuple[str, ...]
    tissue_ids: tuple[str, ...]
    types: tuple[TypeSpec, ...]
    n_datasets: int = 2


def _t(term, group, weight=1.0, expression_of=()):
    return TypeSpec(term, group, weight, tuple(expression_of))


# Real CL terms per tissue. Comments say which filter a term exercises in the tiny profile.
TISSUES: tuple[TissueSpec, ...] = (
    TissueSpec("blood", ("blood", "venous blood"), ("UBERON:0000178", "UBERON:0013756"), (
        _t("CL:0000624", "T"), _t("CL:0000625", "T"),  # CD4 / CD8 alpha-beta T cell
        _t("CL:0000788", "B"), _t("CL:0000787", "B"),  # naive / memory B cell
        _t("CL:0000860", "mono"), _t("CL:0000875", "mono", 0.5),  # classical / non-classical monocyte
        _t("CL:0000623", "NK"),  # natural killer cell
        _t("CL:0000784", "DC", 0.04),  # plasmacytoid dendritic cell: rare -> min cells filter
        _t("CL:0000738", "broad", 0.3, ("CL:0000624", "CL:0000788", "CL:0000860")),  # leukocyte: 5 ancestors
    ), 4),
    TissueSpec("lung", ("lung", "upper lobe of left lung"), ("UBERON:0002048", "UBERON:0008952"), (
        _t("CL:0002063", "lung_epi"), _t("CL:0002062", "lung_epi"),  # alveolar type 2 / type 1
        _t("CL:0000158", "lung_epi", 0.6), _t("CL:1000271", "lung_epi", 0.6),  # club / multiciliated
        _t("CL:0000583", "macro"),  # alveolar macrophage
        _t("CL:0000624", "T", 0.6), _t("CL:0000625", "T", 0.6), _t("CL:0000860", "mono", 0.5),
        _t("CL:0002553", "broad", 0.5, ("CL:0002062",)),  # fibroblast of lung: 5 ancestors
        _t("CL:0000097", "mast", 0.03),  # mast cell: rare
        _t("unknown", "unknown", 0.2, ("CL:0002063", "CL:0000583")),  # not a CL term
    ), 4),
    TissueSpec("colon", ("colon", "transverse colon"), ("UBERON:0001155", "UBERON:0001157"), (
        _t("CL:0000584", "gut_epi"), _t("CL:0000160", "gut_epi"),  # enterocyte / goblet cell
        _t("CL:0002250", "gut_epi", 0.7),  # intestinal crypt stem cell
        _t("CL:0000786", "plasma"), _t("CL:0000235", "macro", 0.6), _t("CL:0000624", "T", 0.5),
    ), 3),
    TissueSpec("liver", ("liver", "caudate lobe of liver"), ("UBERON:0002107", "UBERON:0001117"), (
        _t("CL:0000182", "broad", 1.5, ("CL:0000584",)),  # hepatocyte: 5 ancestors in current CL
        _t("CL:0000091", "macro"),  # Kupffer cell
        _t("CL:0000623", "NK", 0.6), _t("CL:0000625", "T", 0.5),
    ), 2),
    TissueSpec("kidney", ("kidney", "cortex of kidney"), ("UBERON:0002113", "UBERON:0001225"), (
        _t("CL:1000838", "kidney_epi"), _t("CL:1001106", "kidney_epi"),  # proximal tubule / thick ascending limb
        _t("CL:0000235", "macro", 0.5),
        _t("CL:0000115", "broad", 0.4, ("CL:1000838",)),  # endothelial cell: 2 ancestors
    ), 2),
    TissueSpec("brain", ("cerebral cortex",), ("UBERON:0000956",), (
        _t("CL:0000128", "glia"), _t("CL:0000129", "macro", 0.8),  # oligodendrocyte / microglial cell
        _t("CL:0000127", "broad", 0.5, ("CL:0000128",)),  # astrocyte: 6 ancestors
    ), 2),
    TissueSpec("skin of body", ("skin of body", "skin of leg"), ("UBERON:0002097", "UBERON:0001511"), (
        _t("CL:0000312", "skin_epi"), _t("CL:0000624", "T", 0.5), _t("CL:0000235", "macro", 0.4),
        _t("CL:0000097", "mast", 0.03),
    ), 2),
)

# A type seen in one dataset only (so in too few donors): microglia appear in the first brain dataset
# only; a coarse "T cell" annotation replaces CD4/CD8 in two blood datasets (a parent label that stays in).
SINGLE_DATASET_TYPES = {"CL:0000129"}
COARSE_T = ("CL:0000084", ("CL:0000624", "CL:0000625"))

DISEASES = (("normal", "PATO:0000461"), ("COVID-19", "MONDO:0100096"), ("lung adenocarcinoma", "MONDO:0005061"))
DEV_STAGES = tuple((f"{age}-year-old human stage", f"HsapDv:{age + 80:07d}") for age in range(22, 80, 3))
