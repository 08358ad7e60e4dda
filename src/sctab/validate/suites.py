"""The expectation suites, as code: what each pipeline stage promises about its output.

A ``SuiteSpec`` bundles a GX suite name, the frame it checks, the columns that identify an
offending row, and the checks; each ``Check`` pairs a GX expectation (with a plain-words
``description`` that Data Docs show) and an explainer that words a failure. Suites are grouped by
concern, as in summary.json: ``extract``, ``filters``, ``split``, ``store``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import great_expectations.expectations as gxe
import pandas as pd

from sctab.params_schema import section
from sctab.validate import frames
from sctab.validate.messages import Explainer, each, fmt_num, observed, plural, summarised
from sctab.validate.stats import StoreStats, parquet_rows

LOG1P_SLACK = 1e-4  # float32 rounding of log1p(target_sum) for a cell with one expressed gene


@dataclass(frozen=True)
class Check:
    """One expectation plus the function that says what is wrong when it fails."""

    expectation: gxe.Expectation
    explain: Explainer


@dataclass
class SuiteSpec:
    """A GX suite to run on one frame.

    ``group`` is the concern (summary.json key), ``label`` the prefix of failure messages
    ("split", "store/test"), ``problems`` failures found before GX could run (e.g. missing files).
    """

    name: str
    group: str
    label: str
    frame: pd.DataFrame
    index_columns: list[str]
    checks: list[Check]
    problems: list[str] = field(default_factory=list)
    info: dict = field(default_factory=dict)


# ---------------------------------------------------------------------------------------- extract
def extract_suite(obs: pd.DataFrame, params: Mapping) -> SuiteSpec:
    """Cells kept by extraction: unique ids, primary data only, allowed assays."""
    f = section(params, "filters")
    cell = lambda r: f"soma_joinid {r.get('soma_joinid')}"  # noqa: E731
    checks = [
        Check(
            gxe.ExpectColumnValuesToNotBeNull(column="soma_joinid", description="every cell has a soma_joinid"),
            summarised("cell", ("has no soma_joinid", "have no soma_joinid"),
                       lambda r: f"donor '{r.get('tech_sample')}'"),
        ),
        Check(
            gxe.ExpectColumnValuesToBeUnique(column="soma_joinid", description="soma_joinid is unique"),
            summarised("row", ("shares its soma_joinid", "share a soma_joinid"), cell),
        ),
        Check(
            gxe.ExpectColumnValuesToNotBeNull(column="tech_sample", description="every cell has a donor (tech_sample)"),
            summarised("cell", ("has no tech_sample", "have no tech_sample"), cell),
        ),
        Check(
            gxe.ExpectColumnValuesToNotBeNull(
                column="cell_type_ontology_term_id", description="every cell has a Cell Ontology term"
            ),
            summarised("cell", ("has no cell_type_ontology_term_id", "have no cell_type_ontology_term_id"), cell),
        ),
    ]
    if f.primary_only:
        checks.append(
            Check(
                gxe.ExpectColumnValuesToBeInSet(
                    column="is_primary_data",
                    value_set=[True],
                    description="only primary data (filters.primary_only): duplicates would leak across splits",
                ),
                summarised(
                    "cell",
                    ("is not primary data", "are not primary data"),
                    lambda r: f"{cell(r)} of donor '{r.get('tech_sample')}'",
                ),
            )
        )
    assays = list(f.assays)
    if assays and section(params, "census.source") == "h5ad":
        # an .h5ad input without an assay column reads 'unknown': the assay filter was a no-op for its cells
        # (the filter report says so), so 'unknown' is allowed here too
        assays.append("unknown")
    if assays:
        checks.append(
            Check(
                gxe.ExpectColumnValuesToBeInSet(
                    column="assay", value_set=assays, description="assay is one of filters.assays"
                ),
                _assay_explainer(assays),
            )
        )
    return SuiteSpec("extract", "extract", "extract", obs, ["soma_joinid", "tech_sample"], checks)


def _assay_explainer(allowed: list[str]) -> Explainer:
    def explain(result: dict) -> list[str]:
        n = int(result.get("unexpected_count") or 0)
        counts = result.get("partial_unexpected_counts") or []
        values = ", ".join(f"'{c['value']}'" for c in counts) or "?"
        verb = "has" if n == 1 else "have"
        return [f"{plural(n, 'cell')} {verb} a disallowed assay {values} (allowed: {', '.join(allowed)})"]

    return explain


# ---------------------------------------------------------------------------------------- filters
def filters_suite(obs: pd.DataFrame, ontology, params: Mapping) -> SuiteSpec:
    """Per cell type: enough cells, enough donors, specific enough, a native cell (the paper's filters)."""
    f = section(params, "filters")
    min_cells, min_donors, min_anc, root = f.min_cells_per_type, f.min_donors_per_type, f.min_ancestors, f.root_term
    frame = frames.cell_type_frame(obs, ontology, root)
    eff_root = frame.attrs.get("root_term", root)
    root_text = root if eff_root == root else f"{root} (obsolete, replaced by {eff_root})"
    name = lambda r: f"cell type '{r.get('cell_type')}'"  # noqa: E731
    named = lambda r: f"{name(r)} ({r.get('cell_type_ontology_term_id')})"  # noqa: E731
    checks = [
        Check(
            gxe.ExpectTableRowCountToBeBetween(min_value=1, description="at least one cell type survives the filters"),
            observed("no cell type is left after filtering ({observed} types)"),
        ),
        Check(
            gxe.ExpectColumnValuesToBeBetween(
                column="n_cells", min_value=min_cells, description=f"every cell type has >= {min_cells} cells"
            ),
            each(lambda r: f"{name(r)} has {fmt_num(r.get('n_cells'))} cells (< {min_cells})"),
        ),
        Check(
            gxe.ExpectColumnValuesToBeBetween(
                column="n_donors",
                min_value=min_donors,
                description=f"every cell type is seen in >= {min_donors} donors (tech_sample)",
            ),
            each(lambda r: f"{name(r)} is seen in {fmt_num(r.get('n_donors'))} donors (< {min_donors})"),
        ),
        Check(
            gxe.ExpectColumnValuesToBeInSet(
                column="in_ontology", value_set=[True], description="every cell type is a Cell Ontology term"
            ),
            each(lambda r: f"{named(r)} is not a term of the Cell Ontology"),
        ),
        Check(
            gxe.ExpectColumnValuesToBeBetween(
                column="n_ancestors",
                min_value=min_anc,
                description=f"every cell type has >= {min_anc} ancestors in the Cell Ontology (specific enough)",
            ),
            each(lambda r: f"{named(r)} has {fmt_num(r.get('n_ancestors'))} ancestors (< {min_anc}): too broad a type"),
        ),
        Check(
            gxe.ExpectColumnValuesToBeInSet(
                column="under_root",
                value_set=[True],
                description=f"every cell type is {root_text} or one of its descendants",
            ),
            each(lambda r: f"{named(r)} is not {root_text} or one of its descendants"),
        ),
    ]
    return SuiteSpec(
        "filters", "filters", "filters", frame, ["cell_type", "cell_type_ontology_term_id"], checks,
        info={"root_term": eff_root},
    )


# ------------------------------------------------------------------------------------------ split
def split_suites(obs: pd.DataFrame, assignment: pd.DataFrame, params: Mapping) -> list[SuiteSpec]:
    """Donor-wise split: no donor in two splits, donor fractions near target, every type everywhere,
    every cell of obs assigned exactly once."""
    fractions = section(params, "split.fractions")
    splits = list(fractions)
    tol = section(params, "validate.split_fraction_tolerance")
    slack = 1e-9  # 0.75 - 0.70 is 0.05000000000000004 in floating point; a boundary case passes
    if section(params, "split.by") == "cell":  # cells were split, not donors: each cell is its own group
        assignment = assignment.assign(tech_sample=assignment["soma_joinid"].astype(str))

    donors = frames.donor_split_frame(assignment)
    order = {s: i for i, s in enumerate(splits)}
    donors["splits"] = donors["splits"].map(
        lambda s: " and ".join(sorted(s.split(" and "), key=lambda x: (order.get(x, len(order)), x)))
    )
    leak = Check(
        gxe.ExpectColumnValuesToBeBetween(
            column="n_splits", min_value=1, max_value=1, description="every donor (tech_sample) is in exactly one split"
        ),
        each(lambda r: f"donor '{r.get('tech_sample')}' is in {r.get('splits')}"),
    )

    fr = frames.split_fraction_frame(assignment, fractions)
    frac_checks = [
        Check(
            gxe.ExpectColumnValuesToBeInSet(
                column="known", value_set=[True], description=f"split is one of {', '.join(splits)}"
            ),
            each(lambda r: f"split value '{r.get('split')}' is not one of {', '.join(splits)}"),
        ),
        Check(
            gxe.ExpectColumnValuesToBeBetween(
                column="deviation",
                min_value=0,
                max_value=tol + slack,
                description=f"each split holds its target fraction of donors ± {tol:g}",
            ),
            each(
                lambda r: f"{r.get('split')} holds {r.get('fraction', 0):.1%} of donors ({r.get('n_donors')}); "
                f"target {r.get('target', 0):.0%} ± {tol:.0%}"
            ),
        ),
    ]

    types = frames.cell_type_split_frame(assignment, splits, obs)
    type_checks = [
        Check(
            gxe.ExpectColumnValuesToBeBetween(
                column=f"n_cells_{s}", min_value=1, description=f"every cell type has cells in {s}"
            ),
            each(lambda r, s=s: f"cell type '{r.get('cell_type')}' missing from {s}"),
        )
        for s in splits
    ]

    cover = frames.assignment_coverage_frame(obs, assignment)
    cover_checks = [
        Check(
            gxe.ExpectColumnValuesToBeBetween(
                column="n_assigned", min_value=1, max_value=1, description="every cell is assigned exactly once"
            ),
            summarised(
                "cell",
                ("is not assigned exactly once", "are not assigned exactly once"),
                lambda r: f"soma_joinid {r.get('soma_joinid')}: {plural(int(r.get('n_assigned', 0)), 'time')}",
            ),
        ),
        Check(
            gxe.ExpectColumnValuesToBeInSet(
                column="in_obs", value_set=[True], description="every assigned cell is a cell of obs"
            ),
            summarised(
                "assigned cell",
                ("is not in obs", "are not in obs"),
                lambda r: f"soma_joinid {r.get('soma_joinid')}",
            ),
        ),
    ]
    return [
        SuiteSpec("split_donors", "split", "split", donors, ["tech_sample", "splits"], [leak]),
        SuiteSpec("split_fractions", "split", "split", fr, ["split", "n_donors", "fraction", "target"], frac_checks),
        SuiteSpec("split_cell_types", "split", "split", types, ["cell_type"], type_checks),
        SuiteSpec("split_cells", "split", "split", cover, ["soma_joinid"], cover_checks),
    ]


# ------------------------------------------------------------------------------------------ store
def store_suite(
    stats: StoreStats,
    params: Mapping,
    expected_rows: int | None,
    n_genes: int | None,
    n_labels: int | None,
) -> SuiteSpec:
    """One split of the store: row count, X length, values finite, >= 0, <= log1p(target_sum),
    expm1 row sums == target_sum, cell_type codes inside the lookup."""
    target = section(params, "store.target_sum")
    rtol = section(params, "validate.row_sum_rtol")
    cap = math.log1p(target)
    where = lambda r: f"row {r.get('row')} of {r.get('part')}"  # noqa: E731
    checks: list[Check] = []
    if expected_rows is not None:
        checks.append(
            Check(
                gxe.ExpectTableRowCountToEqual(
                    value=int(expected_rows), description=f"the split holds {expected_rows:,} rows"
                ),
                observed(f"has {{observed}} rows, expected {expected_rows:,}"),
            )
        )
    if n_genes is not None:
        checks.append(
            Check(
                gxe.ExpectColumnValuesToBeBetween(
                    column="n_values",
                    min_value=n_genes,
                    max_value=n_genes,
                    description=f"X has n_genes = {n_genes:,} values (rows of var.parquet)",
                ),
                summarised(
                    "row",
                    (f"has a length other than {n_genes:,} genes", f"have a length other than {n_genes:,} genes"),
                    lambda r: f"{where(r)}: {r.get('n_values')} values",
                ),
            )
        )
    checks += [
        Check(
            gxe.ExpectColumnValuesToBeBetween(
                column="n_nonfinite", min_value=0, max_value=0, description="all values are finite"
            ),
            summarised("row", ("has non-finite values", "have non-finite values"), where),
        ),
        Check(
            gxe.ExpectColumnValuesToBeBetween(column="min", min_value=0, description="no value is negative"),
            summarised(
                "row",
                ("has negative values", "have negative values"),
                lambda r: f"{where(r)}: min {fmt_num(r.get('min'))}",
            ),
        ),
        Check(
            gxe.ExpectColumnValuesToBeBetween(
                column="max",
                max_value=cap + LOG1P_SLACK,
                description=f"no value exceeds log1p(target_sum) = {cap:.4f} (data are normalised and log1p'd)",
            ),
            summarised(
                "row",
                (f"has values above log1p({target:g}) = {cap:.4f}", f"have values above log1p({target:g}) = {cap:.4f}"),
                lambda r: f"{where(r)}: max {fmt_num(r.get('max'))}",
            ),
        ),
        Check(
            gxe.ExpectColumnValuesToBeBetween(
                column="expm1_sum",
                min_value=target * (1 - rtol),
                max_value=target * (1 + rtol),
                description=f"expm1 of each row sums to target_sum = {target:g} (± {rtol:.0%})",
            ),
            summarised(
                "row",
                (f"does not sum to {target:g} after expm1", f"do not sum to {target:g} after expm1"),
                lambda r: f"{where(r)}: {fmt_num(r.get('expm1_sum'))}",
            ),
        ),
    ]
    if n_labels is not None:
        checks.append(
            Check(
                gxe.ExpectColumnValuesToBeBetween(
                    column="cell_type",
                    min_value=0,
                    max_value=max(n_labels - 1, 0),
                    description=f"cell_type codes index categorical_lookup/cell_type.parquet (0..{n_labels - 1})",
                ),
                summarised(
                    "row",
                    (
                        f"has a cell_type code outside the lookup (0..{n_labels - 1})",
                        f"have cell_type codes outside the lookup (0..{n_labels - 1})",
                    ),
                    lambda r: f"{where(r)}: code {r.get('cell_type')}",
                ),
            )
        )
    return SuiteSpec(
        f"store_{stats.split}", "store", f"store/{stats.split}", stats.frame, ["part", "row"], checks,
        problems=list(stats.problems),
    )


def store_layout(store_dir: str | Path) -> tuple[int | None, int | None, list[str]]:
    """(n_genes from var.parquet, number of cell type labels, problems) of a store directory."""

    store_dir = Path(store_dir)
    problems: list[str] = []
    n_genes = n_labels = None
    var = store_dir / "var.parquet"
    lookup = store_dir / "categorical_lookup" / "cell_type.parquet"
    try:
        n_genes = parquet_rows(var)
    except Exception as exc:  # noqa: BLE001
        problems.append(f"cannot read {var} ({exc.__class__.__name__}: {exc}); X length is not checked")
    try:
        n_labels = parquet_rows(lookup)
    except Exception as exc:  # noqa: BLE001
        problems.append(f"cannot read {lookup} ({exc.__class__.__name__}: {exc}); cell_type codes are not checked")
    return n_genes, n_labels, problems
