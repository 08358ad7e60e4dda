"""HTML for the report page, written by hand (no template engine, no script): the CSS, escaping, inline PNG
figures, tables from DataFrames, and the small markdown the comparison tables are written in.
"""

from __future__ import annotations

import base64
import html
import io
import re

import numpy as np
import pandas as pd

CSS = """body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:2em auto;max-width:1200px;
color:#222;padding:0 1em}h1{font-size:1.5em}h2{font-size:1.2em;border-bottom:1px solid #ddd;padding-bottom:.2em;
margin-top:2em}h3{font-size:1em}table{border-collapse:collapse;margin:.6em 0;font-size:.85em}
th,td{border:1px solid #ddd;padding:.25em .6em;text-align:left;vertical-align:top}th{background:#f4f4f4}
td.n{text-align:right}img{max-width:100%;height:auto;display:block;margin:.5em 0}.note{color:#555;font-size:.9em}
.warn{color:#a33}code{background:#f4f4f4;padding:0 .2em}nav a{margin-right:1em}"""


def esc(x) -> str:
    return html.escape(str(x), quote=True)


def _inline(text: str) -> str:
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", esc(text))


def png(fig, alt: str) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img alt="{esc(alt)}" src="data:image/png;base64,{data}">'


def html_table(frame: pd.DataFrame | list, index: bool = True, header: bool = True) -> str:
    frame = pd.DataFrame(frame) if not isinstance(frame, pd.DataFrame) else frame
    head = ([esc(frame.index.name or "")] if index else []) + [esc(c) for c in frame.columns]
    out = ["<table>" + ("<tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>" if header else "")]
    for idx, row in frame.iterrows():
        cells = [f"<td>{esc(idx)}</td>"] if index else []
        for v in row:
            num = isinstance(v, (int, float, np.integer, np.floating))
            cells.append(f'<td class="n">{esc(f"{v:,}" if isinstance(v, (int, np.integer)) else v)}</td>' if num
                         else f"<td>{esc(v)}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    return "\n".join(out) + "</table>"


def markdown_html(text: str) -> str:
    """The markdown our tables are written in: '#' headings, pipe tables, paragraphs; inline `code`."""
    out, table = [], []

    def flush():
        if table:
            rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in table
                    if not re.fullmatch(r"\|?[\s:|-]+\|?", line.strip())]
            if rows:
                head, *body = rows
                out.append("<table><tr>" + "".join(f"<th>{_inline(c)}</th>" for c in head) + "</tr>"
                           + "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>" for r in body)
                           + "</table>")
            table.clear()

    for line in text.splitlines():
        if line.strip().startswith("|"):
            table.append(line)
            continue
        flush()
        m = re.match(r"(#+)\s+(.*)", line)
        if m:
            out.append(f"<h3>{_inline(m.group(2))}</h3>")
        elif line.strip():
            out.append(f"<p>{_inline(line.strip())}</p>")
    flush()
    return "\n".join(out)


def section(anchor: str, title: str, body: str) -> str:
    return f'<section id="{anchor}"><h2>{esc(title)}</h2>\n{body}\n</section>'
