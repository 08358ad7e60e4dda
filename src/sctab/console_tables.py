"""Console tables (rich) for stage reports, so a person sees at a glance what each step did."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table


def print_filter_report(report: dict, console: Console | None = None) -> None:
    console = console or Console()
    t = Table(title="cell filters (Methods, Dataset preparation)")
    for col in ("filter", "cells before", "cells after", "types after", "donors after", "removed types"):
        t.add_column(col, justify="right" if "cells" in col or "after" in col else "left")
    for s in report["filters"]:
        b, a = s["before"], s["after"]
        t.add_row(s["filter"], f"{b.get('cells', ''):,}", f"{a.get('cells', ''):,}", str(a.get("cell_types", "")),
                  str(a.get("donors", "")), ", ".join(s.get("removed_types", []))[:60])
    console.print(t)
    for n in report.get("notes", []):
        console.print(f"[yellow]note:[/] {n}")
    k = report["kept"]
    console.print(f"kept {k['cells']:,} cells, {k['cell_types']} cell types, {k['donors']} donors, "
                  f"{k['tissues']} tissues; {report['genes']['selected']} of {report['genes']['census']} genes")
