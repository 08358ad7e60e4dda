"""A results report (index.md + self-contained index.html) that puts our numbers beside the paper's.

``write_report(out_dir, profile=..., sections=[...])``: each section is ``{"title": str, "text": str,
"table": DataFrame | None, "figures": [png paths relative to out_dir]}``. Text is plain paragraphs
separated by blank lines, with ``- `` bullet lines, ``**bold**`` and ```code``` understood. The output
is deterministic (no timestamps) so that re-running an unchanged pipeline gives an unchanged report.
"""

from __future__ import annotations

import html
import math
import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from sctab.evaluate.paper import DATASET, SOURCE

_CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; max-width: 1100px; margin: 2em auto;
       padding: 0 1em; color: #222; line-height: 1.5; }
h1 { border-bottom: 2px solid #ccc; padding-bottom: .3em; }
h2 { border-bottom: 1px solid #e3e3e3; padding-bottom: .2em; margin-top: 2em; }
.banner { background: #fff8e1; border-left: 5px solid #f0b400; padding: .7em 1em; margin: 1em 0; }
table { border-collapse: collapse; margin: 1em 0; font-size: .92em; }
th, td { border: 1px solid #ccc; padding: .3em .7em; text-align: right; }
th { background: #f3f3f3; }
td.text, th.text { text-align: left; }
tr:nth-child(even) td { background: #fafafa; }
figure { margin: 1.2em 0; }
figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: .85em; color: #666; }
code { background: #f2f2f2; padding: 0 .25em; border-radius: 3px; }
.missing { color: #b00020; }
nav ul { columns: 2; }
footer { margin-top: 3em; font-size: .85em; color: #666; }
"""


# ------------------------------------------------------------------------------------------ formatting


def _decimals(x: float) -> int:
    s = repr(float(x))
    if "e" in s or "." not in s:
        return 4
    return len(s.split(".")[1].rstrip("0"))


def format_mean_std(mean, std=None, digits: int | None = None) -> str:
    """"0.8295 ± 0.0007"; digits default to the precision the numbers carry (as the paper prints them)."""
    if mean is None or not _is_finite(mean):
        return "n/a"
    if digits is None:
        digits = min(6, max(_decimals(mean), _decimals(std) if _is_finite(std) else 0))
    if std is None or not _is_finite(std):
        return f"{float(mean):.{digits}f}"
    return f"{float(mean):.{digits}f} ± {float(std):.{digits}f}"


def _is_finite(x) -> bool:
    try:
        return x is not None and math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def _unpack(v) -> tuple[float | None, float | None]:
    if isinstance(v, Mapping):
        return v.get("mean"), v.get("std")
    return v, None


def side_by_side(ours: dict[str, float], paper: dict[str, dict], label: str = "", digits: int = 4) -> pd.DataFrame:
    """Our value, the paper's (mean ± std) and ours - paper, for the keys both dicts have (paper's order).

    ``paper`` is a group of ``PAPER`` (e.g. ``PAPER["model_comparison"]``): values ``{"mean", "std"}`` or plain
    floats. ``ours`` values are floats, or ``{"mean", "std"}`` over our seeds. All three columns are
    formatted strings ("0.8123 ± 0.0011", "0.8295 ± 0.0007", "-0.0172"); ``label`` names the index.
    """
    keys = [k for k in paper if k in ours]
    rows = []
    for k in keys:
        om, os_ = _unpack(ours[k])
        pm, ps = _unpack(paper[k])
        diff = float(om) - float(pm) if _is_finite(om) and _is_finite(pm) else None
        rows.append({
            "ours": format_mean_std(om, os_, digits),
            "paper": format_mean_std(pm, ps),
            "difference": f"{diff:+.{digits}f}" if diff is not None else "n/a",
        })
    df = pd.DataFrame(rows, index=pd.Index(keys, name=label or "key"), columns=["ours", "paper", "difference"])
    return df


def _cell(v) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, bool | np.bool_):
        return str(bool(v))
    if isinstance(v, int | np.integer):
        return f"{int(v):,}" if abs(int(v)) >= 10_000 else str(int(v))
    if isinstance(v, float | np.floating):
        if not math.isfinite(float(v)):
            return "n/a"
        v = float(v)
        if v.is_integer() and abs(v) >= 1:
            return f"{int(v):,}" if abs(v) >= 10_000 else str(int(v))
        return f"{v:.4g}" if abs(v) < 1e-3 else f"{v:.4f}"
    return str(v)


def _table_rows(df: pd.DataFrame) -> tuple[list[str], list[list[str]], list[bool]]:
    """Header, body cells and per-column 'is text' flags; the index is kept unless it is a plain RangeIndex."""
    keep_index = not (isinstance(df.index, pd.RangeIndex) and df.index.name is None)
    d = df.reset_index() if keep_index else df
    header = [str(c) for c in d.columns]
    body = [[_cell(v) for v in row] for row in d.itertuples(index=False, name=None)]
    text = [not pd.api.types.is_numeric_dtype(d[c]) for c in d.columns]
    return header, body, text


def _md_table(df: pd.DataFrame) -> str:
    header, body, text = _table_rows(df)
    esc = lambda s: s.replace("|", "\\|").replace("\n", " ")  # noqa: E731
    lines = ["| " + " | ".join(esc(h) for h in header) + " |",
             "|" + "|".join(":---" if t else "---:" for t in text) + "|"]
    lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in body]
    return "\n".join(lines)


def _html_table(df: pd.DataFrame) -> str:
    header, body, text = _table_rows(df)
    cls = [' class="text"' if t else "" for t in text]
    out = ["<table>", "<thead><tr>" + "".join(f"<th{c}>{html.escape(h)}</th>" for h, c in zip(header, cls))
           + "</tr></thead>", "<tbody>"]
    for row in body:
        out.append("<tr>" + "".join(f"<td{c}>{html.escape(v)}</td>" for v, c in zip(row, cls)) + "</tr>")
    out += ["</tbody>", "</table>"]
    return "\n".join(out)


def _inline_html(s: str) -> str:
    s = html.escape(s)
    s = re.sub(r"`([^`]+)`", r"<code>\1</code>", s)
    s = re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", s)
    return s


def _blocks(text: str) -> list[str]:
    return [b.strip("\n") for b in re.split(r"\n\s*\n", text or "") if b.strip()]


def _text_html(text: str) -> str:
    out = []
    for b in _blocks(text):
        lines = [ln.strip() for ln in b.splitlines()]
        if all(ln.startswith(("- ", "* ")) for ln in lines):
            out.append("<ul>" + "".join(f"<li>{_inline_html(ln[2:])}</li>" for ln in lines) + "</ul>")
        else:
            out.append("<p>" + " ".join(_inline_html(ln) for ln in lines) + "</p>")
    return "\n".join(out)


def _slug(title: str, i: int) -> str:
    s = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")
    return f"s{i}-{s}" if s else f"s{i}"


def _rel_figure(p, out_dir: Path) -> str:
    p = Path(p)
    if p.is_absolute():
        try:
            p = p.relative_to(out_dir.resolve())
        except ValueError:
            try:
                p = p.relative_to(out_dir)
            except ValueError:
                return p.as_posix()
    return p.as_posix()


# ------------------------------------------------------------------------------------------ the report


EMBEDDED_BOX = (
    "**The data here is the embedded census, a test bed we built, not biology.** Its cells are generated: "
    "cell-type programs that follow the Cell Ontology (a term's expression is the sum of its ancestors' effects), "
    "state-dependent marker modules that tell sibling types apart only together with the cell's state (so a "
    "linear model cannot fully separate them and a nonlinear one can), donor, assay and dataset effects, and "
    "negative-binomial counts at 10x-like depth. It was designed to make visible what the paper's findings are "
    "about (nonlinear models beating the linear one, augmentation across donors, cost of data size), so its "
    "figures show that the platform measures those things correctly, not that the findings hold for real "
    "tissues. `make census-realism` measures it beside real 10x data shipped in packages (UMIs and genes per "
    "cell, mean-variance relation, kNN label purity): see the README section \"The embedded census\".")


def header_text(profile: str, embedded: bool = False) -> str:
    """The banner of a report: whose numbers are whose, and (embedded census) what the data is."""
    n = DATASET["n_cells"] / 1e6
    box = f"\n\n{EMBEDDED_BOX}" if embedded else ""
    return (f"All numbers of ours in this report come from the **{profile}** profile. The paper's numbers "
            f"(Fischer et al.) are for the full CELLxGENE census ({n:.1f} M cells, {DATASET['n_donors']:,} "
            f"donors, {DATASET['n_cell_types']} cell types, {DATASET['n_train_cells'] / 1e6:.1f} M training "
            f"cells); they are shown for reference, and differences from them mostly reflect data size unless "
            f"the profile is the full census.{box}")


def write_report(out_dir, *, profile: str, sections: list[dict], title: str = "scTab reproduction report",
                 embedded: bool = False) -> Path:
    """Write ``index.md`` and ``index.html`` into ``out_dir``; returns the path of ``index.html``.

    Figure paths are written as given (relative to ``out_dir``; absolute paths under it are made
    relative); a figure that does not exist there is flagged as missing rather than failing.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    banner = header_text(profile, embedded)

    md = [f"# {title}: profile `{profile}`", ""] + [f"> {b}\n" for b in banner.split("\n\n")]
    body = []
    toc = []
    for i, sec in enumerate(sections, 1):
        t = str(sec.get("title") or f"Section {i}")
        anchor = _slug(t, i)
        toc.append(f'<li><a href="#{anchor}">{html.escape(t)}</a></li>')
        md += [f"## {t}", ""]
        body.append(f'<section id="{anchor}"><h2>{html.escape(t)}</h2>')
        text = sec.get("text") or ""
        if text.strip():
            md += ["\n\n".join(_blocks(text)), ""]
            body.append(_text_html(text))
        table = sec.get("table")
        if table is not None:
            table = pd.DataFrame(table)
            if len(table):
                md += [_md_table(table), ""]
                body.append(_html_table(table))
            else:
                md += ["_(empty table)_", ""]
                body.append("<p><em>(empty table)</em></p>")
        for f in sec.get("figures") or []:
            rel = _rel_figure(f, out_dir)
            exists = (out_dir / rel).is_file() if not Path(rel).is_absolute() else Path(rel).is_file()
            md += [f"![{Path(rel).name}]({rel})" + ("" if exists else " _(missing)_"), ""]
            cap = html.escape(rel) + ("" if exists else ' <span class="missing">(missing)</span>')
            body.append(f'<figure><img src="{html.escape(rel, quote=True)}" alt="{html.escape(Path(rel).name)}">'
                        f"<figcaption>{cap}</figcaption></figure>")
        body.append("</section>")
    md += ["---", "", f"Paper: {SOURCE}", ""]

    page = "\n".join([
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}: {html.escape(profile)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}: profile <code>{html.escape(profile)}</code></h1>",
        "".join(f'<div class="banner">{_inline_html(b)}</div>' for b in banner.split("\n\n")),
        "<nav><ul>" + "".join(toc) + "</ul></nav>" if toc else "",
        *body,
        f"<footer>Paper: {html.escape(SOURCE)}</footer>",
        "</body></html>",
        "",
    ])
    (out_dir / "index.md").write_text("\n".join(md), encoding="utf-8")
    out = out_dir / "index.html"
    out.write_text(page, encoding="utf-8")
    return out
