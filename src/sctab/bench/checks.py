"""What a bench row's checks are, and how they are judged.

A row's ``check`` dict holds only pass/fail items: a bool (e.g. "same batch as dense layout"), or a measured value
with its stated bound, ``bounded(value, bound)`` -> ``{"value": v, "bound": b, "ok": v <= b}``. A float
without a bound is not a check: the runner refuses it (the row is an error naming the entry). What a row only
reports (support sizes, buffered rows, the peak RSS with the check) goes in its ``info`` dict and is printed,
never judged.
"""

from __future__ import annotations

import math
from typing import Any


def bounded(value: float, bound: float) -> dict:
    """A measured value and the bound it must not exceed; passes when value <= bound (NaN never passes)."""
    value, bound = float(value), float(bound)
    if math.isnan(bound) or bound < 0:
        raise ValueError(f"a check's bound must be a number >= 0, got {bound!r}")
    return {"value": value, "bound": bound, "ok": bool(value <= bound)}  # NaN <= b is False


def is_bounded(v: Any) -> bool:
    return isinstance(v, dict) and set(v) == {"value", "bound", "ok"} and isinstance(v["ok"], bool)


def not_checks(check: dict) -> list[str]:
    """The entries of a check dict that are neither a bool nor a bounded value (each named with what it is)."""
    return [f"{k!r} = {v!r}" for k, v in check.items() if not (isinstance(v, bool) or is_bounded(v))]


def passed(check: dict) -> bool:
    """Every check of the dict passed. Raises ValueError on an entry that is not a check."""
    bad = not_checks(check)
    if bad:
        raise ValueError(f"not a check (a bool, or bounded(value, bound)): {', '.join(bad)}")
    return all(v if isinstance(v, bool) else v["ok"] for v in check.values())


def _num(v: float) -> str:
    if v == 0:
        return "0"
    return f"{v:.1e}" if abs(v) < 1e-2 or abs(v) >= 1e4 else f"{v:.3g}"


def check_text(check: dict) -> str:
    """One line for the table: each check with its verdict, a bounded one with its value and bound."""
    out = []
    for k, v in check.items():
        if isinstance(v, bool):
            out.append(f"{k}: {'yes' if v else 'NO'}")
        elif is_bounded(v):
            out.append(f"{k} {_num(v['value'])} <= {_num(v['bound'])}: {'yes' if v['ok'] else 'NO'}")
        else:  # an old record's float or text (before checks were bounded): shown, not judged
            out.append(f"{k} {_num(v) if isinstance(v, float) else v} (not judged)")
    return "; ".join(out)


def info_text(info: dict) -> str:
    return "; ".join(f"{k} {_num(v) if isinstance(v, float) else v}" for k, v in info.items())
