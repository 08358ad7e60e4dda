"""Data checks of the pipeline's outputs with Great Expectations 1.x (ephemeral context, suites as code).

``validate_all`` checks the extraction output, the paper's filters, the donor-wise split and the
store, writes ``summary.json`` and Data Docs, and raises ``ValidationError`` naming every problem.
"""

from sctab.validate.stats import StoreStats, split_row_stats
from sctab.validate.suites import Check, SuiteSpec, extract_suite, filters_suite, split_suites, store_suite
from sctab.validate.validation import ValidationError, build_suites, expected_rows_from, validate_all

__all__ = [
    "Check",
    "StoreStats",
    "SuiteSpec",
    "ValidationError",
    "build_suites",
    "expected_rows_from",
    "extract_suite",
    "filters_suite",
    "split_row_stats",
    "split_suites",
    "store_suite",
    "validate_all",
]
