"""The Great Expectations 1.x context: ephemeral, pandas frames in, Data Docs out.

Nothing is kept between runs (no great_expectations/ project folder): suites live in code
(suites.py), the context lives in memory, and the only files are the Data Docs site written where
the caller says. Each suite checks its own frame, so each gets its own ValidationDefinition, run
with the frame as batch parameter; a Checkpoint would pass one set of batch parameters to all its
validation definitions, so the site is built once at the end with ``build_data_docs`` instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse
from urllib.request import url2pathname

import great_expectations as gx
from great_expectations.core.run_identifier import RunIdentifier
from great_expectations.data_context.types.base import ProgressBarsConfig

if TYPE_CHECKING:
    import pandas as pd
    from great_expectations.core import ExpectationSuiteValidationResult

SITE_NAME = "sctab"
DATASOURCE = "sctab_frames"
PARTIAL_COUNT = 20  # offending rows named per failed expectation

def make_context(docs_dir: str | Path):
    """An ephemeral context whose only Data Docs site is a folder at ``docs_dir``.

    The default ephemeral site writes to a fresh temp dir; it is removed so nothing is left behind.
    """
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    for name in list(context.list_data_docs_sites()):
        context.delete_data_docs_site(name)
    context.add_data_docs_site(
        SITE_NAME,
        {
            "class_name": "SiteBuilder",
            "show_how_to_buttons": False,
            "store_backend": {
                "class_name": "TupleFilesystemStoreBackend",
                "base_directory": str(Path(docs_dir).resolve()),
            },
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        },
    )
    context.data_sources.add_pandas(DATASOURCE)
    return context


def run_suite(
    context,
    name: str,
    frame: "pd.DataFrame",
    expectations: list,
    index_columns: list[str] | None = None,
    run_name: str = "sctab-validate",
) -> tuple["ExpectationSuiteValidationResult", list[str]]:
    """Register ``expectations`` as suite ``name`` on a dataframe asset and validate ``frame``.

    Returns the validation result and the ids GX gave the expectations, in the order given, so
    callers can map results back to their own explanations. ``index_columns`` name the offending
    rows in results (e.g. the cell type or the part file and row).
    """
    asset = context.data_sources.get(DATASOURCE).add_dataframe_asset(name)
    batch = asset.add_batch_definition_whole_dataframe(f"{name}_frame")
    suite = context.suites.add(gx.ExpectationSuite(name=name))
    ids = [suite.add_expectation(e).id for e in expectations]
    vd = context.validation_definitions.add(gx.ValidationDefinition(name=name, data=batch, suite=suite))
    result_format = {"result_format": "SUMMARY", "partial_unexpected_count": PARTIAL_COUNT}
    present = [c for c in (index_columns or []) if c in frame.columns]
    if present:
        result_format["unexpected_index_column_names"] = present
    result = vd.run(
        batch_parameters={"dataframe": frame},
        result_format=result_format,
        run_id=RunIdentifier(run_name=run_name),
    )
    return result, ids


def build_docs(context) -> Path:
    """Build the Data Docs site; returns the path of its index.html."""
    urls = context.build_data_docs(site_names=[SITE_NAME])
    return Path(url2pathname(urlparse(urls[SITE_NAME]).path))
