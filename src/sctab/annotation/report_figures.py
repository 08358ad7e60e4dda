"""The report page's own figures, drawn from its tables: the dot plot and the bar of label shares (the
embedding's two panels are :func:`sctab.annotation.plots.draw_embedding`, shared with ``plot_annotation``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from sctab.annotation.annotator import UNASSIGNED
from sctab.annotation.report_tables import DotTable


def draw_dotplot(t: DotTable, cluster_name: str):
    """Dots on a clusters x labels grid; the colour bar and the size key stay small however many rows."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    nr, nc = t.fraction.shape
    fig, ax = plt.subplots(figsize=(max(6.0, 0.32 * nc + 4.5), max(3.0, 0.28 * nr + 2.8)), constrained_layout=True)
    yy, xx = np.meshgrid(np.arange(nr), np.arange(nc), indexing="ij")
    f = t.fraction.to_numpy(dtype=float).ravel()
    show = f > 0
    sc = ax.scatter(xx.ravel()[show], yy.ravel()[show], s=f[show] * 220, c=t.probability.to_numpy(float).ravel()[show],
                    cmap="Reds", vmin=0, vmax=1, edgecolors="grey", linewidths=0.4)
    ax.set_xticks(range(nc))
    ax.set_xticklabels(t.fraction.columns, rotation=90, fontsize=8)
    ax.set_yticks(range(nr))
    ax.set_yticklabels([f"{c} ({n:,})" for c, n in t.sizes.items()], fontsize=8)
    ax.set_xlim(-0.7, nc - 0.3)
    ax.set_ylim(nr - 0.5, -0.5)
    ax.set_xlabel("predicted label")
    ax.set_ylabel(f"{cluster_name} (cells)")
    ax.grid(color="#eeeeee", linewidth=0.5)
    ax.set_axisbelow(True)
    height = min(1.0, 2.2 / fig.get_figheight())  # about 2 inches of colour bar
    cax = ax.inset_axes((1.04, 1.0 - height, 0.03, height))
    fig.colorbar(sc, cax=cax, label="mean probability")
    for share in (0.25, 0.5, 1.0):
        ax.scatter([], [], s=share * 220, color="lightgrey", edgecolors="grey", label=f"{share:.0%}")
    ax.legend(title="share of cluster", loc="upper left", bbox_to_anchor=(1.2, 1.0), frameon=False, fontsize=8)
    return fig


def draw_shares(shares: pd.DataFrame):
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 2.2), layout="constrained")
    colours = ["#4c9a2a", "#e0a526", "#c0392b", "#7f8c8d"]
    short = ["class level", "coarser label", f"{UNASSIGNED}: low probability", f"{UNASSIGNED}: no counts"]
    total = max(int(shares["cells"].sum()), 1)
    left = 0.0
    for (_, row), colour, name in zip(shares.iterrows(), colours, short):
        w = row["cells"] / total
        ax.barh(0, w, left=left, color=colour, label=f"{name} ({row['share']})")
        left += w
    ax.set_xlim(0, 1)
    ax.set_yticks([])
    ax.set_xlabel("share of cells")
    fig.legend(fontsize=8, loc="outside lower center", ncol=4, frameon=False)
    return fig
