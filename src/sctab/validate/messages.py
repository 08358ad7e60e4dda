"""Turning a failed GX result into plain words that name the offending values.

GX results say "3 unexpected values"; people need "cell type 'pericyte' has 120 cells (< 300)".
Each check carries an *explainer*: a function of the GX result dict (``to_json_dict()["result"]``)
returning one line per problem. The helpers here build the two kinds used: one line per offending
row (aggregate frames: a few cell types, donors, splits) and one summary line with examples (big
frames: cells, store rows).
"""

from __future__ import annotations

from typing import Callable

Explainer = Callable[[dict], list[str]]
EXAMPLES = 5  # examples named in a summary line


def plural(n: int, word: str, many: str | None = None) -> str:
    """``plural(1, "row") == "1 row"``, ``plural(3, "row") == "3 rows"``."""
    return f"{n:,} {word if n == 1 else (many or word + 's')}"


def fmt_num(x) -> str:
    """Numbers as people write them: integers without '.0', floats with 6 significant digits."""
    if isinstance(x, bool) or x is None:
        return str(x)
    if isinstance(x, float) and x.is_integer():
        return f"{int(x):,}"
    if isinstance(x, float):
        return f"{x:,.6g}"
    if isinstance(x, int):
        return f"{x:,}"
    return str(x)


def offending(result: dict) -> list[dict]:
    """The offending rows GX listed (up to PARTIAL_COUNT), each a dict of the index columns + value."""
    rows = result.get("partial_unexpected_index_list") or []
    return [r for r in rows if isinstance(r, dict)]


def _more(result: dict, shown: int) -> list[str]:
    n = int(result.get("unexpected_count") or 0)
    return [f"... and {n - shown:,} more"] if n > shown else []


def each(line: Callable[[dict], str]) -> Explainer:
    """One line per offending row, built by ``line(row_dict)``."""

    def explain(result: dict) -> list[str]:
        rows = offending(result)
        return [line(r) for r in rows] + _more(result, len(rows))

    return explain


def summarised(
    noun: str, problem: tuple[str, str], example: Callable[[dict], str], nouns: str | None = None
) -> Explainer:
    """One line: '<n> <noun(s)> <problem> (<example>, <example>, ...)'.

    ``problem`` is (singular verb phrase, plural verb phrase), e.g. ("has NaN", "have NaN").
    """

    def explain(result: dict) -> list[str]:
        n = int(result.get("unexpected_count") or 0)
        rows = offending(result)
        examples = ", ".join(example(r) for r in rows[:EXAMPLES])
        if n > EXAMPLES:
            examples += ", ..."
        verb = problem[0] if n == 1 else problem[1]
        return [f"{plural(n, noun, nouns)} {verb}" + (f" ({examples})" if examples else "")]

    return explain


def observed(template: str) -> Explainer:
    """For table-level checks: ``template`` formatted with GX's ``observed_value``."""

    def explain(result: dict) -> list[str]:
        return [template.format(observed=fmt_num(result.get("observed_value")))]

    return explain


def exception_text(exception_info) -> str | None:
    """The message of an exception GX caught while evaluating an expectation, if any.

    GX 1.x reports it in two shapes: ``{"raised_exception": True, "exception_message": ...}`` or,
    when a metric failed (e.g. a missing column), a dict keyed by metric id of such dicts.
    """
    if not isinstance(exception_info, dict):
        return None
    infos = [exception_info] if "raised_exception" in exception_info else list(exception_info.values())
    for info in infos:
        if isinstance(info, dict) and info.get("raised_exception"):
            msg = str(info.get("exception_message") or "unknown error").strip()
            return msg.splitlines()[-1] if msg else "unknown error"
    return None
