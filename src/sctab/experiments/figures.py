"""Figures of the paper's scaling and augmentation experiments (Fig. 2b-d/f, Fig. 3d, Supp. Table 3) from the
experiments' points tables; the evaluation figures and the shared drawing helpers are ``sctab.evaluate.figures``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from sctab.evaluate.figures import (
    CYCLE,
    MODEL_COLORS,
    PAPER_NOTE,
    display_name,
    model_color,
    new_figure,
    no_data,
    save_figure,
    titled,
)

# ------------------------------------------------------------------------------------ Fig. 2b/d/f


def _numeric_x(values: pd.Series) -> tuple[np.ndarray, list | None]:
    """Numeric x, or positions plus tick labels when x is categorical."""
    num = pd.to_numeric(values, errors="coerce")
    if num.notna().all() or values.isna().all():
        return num.to_numpy(dtype=float), None
    cats = list(dict.fromkeys(values.astype(str)))
    return np.array([cats.index(v) for v in values.astype(str)], dtype=float), cats


def scaling_curve(points: pd.DataFrame, x: str, out, hue: str | None = None, xlog: bool = True, title: str = "",
                  profile: str = "", paper: pd.DataFrame | None = None) -> Path:
    """Test macro F1 and test loss against ``x``, one line per ``hue`` value (Fig. 2b/2d/2f).

    ``points`` has columns ``x``, ``test_f1_macro``, ``test_loss`` (and ``hue``); rows sharing an x (seeds)
    are drawn as mean ± std. ``paper`` (optional) has ``x``, ``test_f1_macro`` and optionally
    ``test_f1_macro_std``, ``test_loss``, ``test_loss_std`` (and ``hue``), drawn as open markers. With
    ``xlog`` rows with x <= 0 cannot be placed and are left out (the panel says how many).
    """
    points = pd.DataFrame(points)
    if x not in points.columns:
        raise KeyError(f"scaling_curve: no column {x!r} in points (columns: {list(points.columns)})")
    use_hue = bool(hue) and hue in points.columns
    metrics = [("test_f1_macro", "test macro F1"), ("test_loss", "test loss (cross-entropy)")]
    fig = new_figure(11.0, 4.6)
    axes = fig.subplots(1, 2)

    xs_all, cats = _numeric_x(points[x])
    df = points.assign(_x=xs_all, _h=points[hue].astype(str).where(points[hue].notna(), "n/a")
                       if use_hue else "all")
    dropped = 0
    if xlog and cats is None:
        bad = ~(df["_x"] > 0)
        dropped = int(bad.sum())
        df = df[~bad]
    groups = list(dict.fromkeys(df["_h"]))
    for ax, (col, label) in zip(axes, metrics):
        drew = False
        if col in df.columns:
            for i, g in enumerate(groups):
                sub = df[df["_h"] == g].assign(_y=lambda d: pd.to_numeric(d[col], errors="coerce"))
                sub = sub[np.isfinite(sub["_y"])]
                if sub.empty:
                    continue
                agg = sub.groupby("_x")["_y"].agg(["mean", "std", "count"]).sort_index()
                color = model_color(g, i) if use_hue else MODEL_COLORS["sctab"]
                lab = (display_name(g) if use_hue else "ours") + (f" ({profile})" if profile and not use_hue else "")
                yerr = agg["std"].where(agg["count"] > 1).fillna(0.0).to_numpy()
                ax.errorbar(agg.index.to_numpy(), agg["mean"].to_numpy(), yerr=yerr if (agg["count"] > 1).any()
                            else None, fmt="-o", color=color, ms=4, capsize=3, lw=1.4, label=lab)
                drew = True
        if paper is not None and col in paper.columns and x in paper.columns:
            pp = pd.DataFrame(paper)
            px = pd.to_numeric(pp[x], errors="coerce")
            py = pd.to_numeric(pp[col], errors="coerce")
            ok = np.isfinite(px) & np.isfinite(py) & ((px > 0) if xlog and cats is None else True)
            if ok.any():
                pstd = pd.to_numeric(pp[f"{col}_std"], errors="coerce") if f"{col}_std" in pp else None
                phue = pp[hue].astype(str) if use_hue and hue in pp else pd.Series(["paper"] * len(pp), index=pp.index)
                for j, g in enumerate(dict.fromkeys(phue[ok])):
                    m = ok & (phue == g)
                    color = model_color(g, groups.index(g)) if g in groups else "0.2"
                    order = np.argsort(px[m].to_numpy())
                    ax.errorbar(px[m].to_numpy()[order], py[m].to_numpy()[order],
                                yerr=None if pstd is None else pstd[m].fillna(0).to_numpy()[order],
                                fmt="--D", mfc="white", color=color, ms=6, capsize=3, lw=1,
                                label=f"{PAPER_NOTE}" + (f": {display_name(g)}" if g != "paper" else ""))
                drew = True
        if not drew:
            no_data(ax, f"no {col}")
            ax.set_title(label, fontsize=10)
            continue
        if xlog and cats is None:
            ax.set_xscale("log")
        if cats is not None:
            ax.set_xticks(range(len(cats)), cats, rotation=30, ha="right")
        ax.set_xlabel(x + (" (log scale)" if xlog and cats is None else ""))
        ax.set_ylabel(label)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7, framealpha=0.9)
        ax.set_title(label + (f"  [{dropped} rows with {x} <= 0 left out]" if dropped else ""), fontsize=10)
    head = title or f"Test metrics against {x}"
    if len(df) and df.groupby(["_h", "_x"]).size().max() > 1:
        head += " (mean ± std over seeds)"
    fig.suptitle(titled(head, profile), fontsize=11)
    return save_figure(fig, out)


# ----------------------------------------------------------------------------------------- Supp. T3


_CONDITIONS = ["without augmentation", "with augmentation"]


def _paired_p(a: np.ndarray, b: np.ndarray) -> float:
    if len(a) < 2 or np.allclose(a - b, (a - b)[0]):
        return np.nan
    from scipy.stats import ttest_rel

    return float(ttest_rel(a, b).pvalue)


def paired_comparison(df: pd.DataFrame, out, profile: str = "") -> Path:
    """Test loss and macro F1 with vs without augmentation, one line per seed (Supp. Table 3, Fig. 3d).

    ``df`` has columns ``condition`` ("with augmentation" / "without augmentation"), ``seed``, ``test_loss``
    and ``test_f1_macro``. Each seed's two runs are joined; the black bar is mean ± std per condition, and
    the panel title gives a paired t-test over the seeds that have both runs.
    """
    df = pd.DataFrame(df)
    conds = [c for c in _CONDITIONS if c in set(df.get("condition", []))]
    conds += sorted({str(c) for c in df.get("condition", [])} - set(conds))
    fig = new_figure(9.5, 4.6)
    axes = fig.subplots(1, 2)
    for ax, (col, label) in zip(axes, [("test_loss", "test loss (cross-entropy)"),
                                       ("test_f1_macro", "test macro F1")]):
        if col not in df.columns or not conds:
            no_data(ax, f"no {col}")
            ax.set_title(label, fontsize=10)
            continue
        d = df.assign(_y=pd.to_numeric(df[col], errors="coerce"))
        d = d[np.isfinite(d["_y"])]
        wide = d.pivot_table(index="seed", columns="condition", values="_y", aggfunc="mean")
        pos = {c: i for i, c in enumerate(conds)}
        for i, (seed, row) in enumerate(wide.iterrows()):
            cs = [c for c in conds if c in row.index and np.isfinite(row[c])]
            ax.plot([pos[c] for c in cs], [row[c] for c in cs], "-o", color=CYCLE[i % len(CYCLE)], ms=5, lw=1,
                    alpha=0.8, label=f"seed {seed}")
        for c in conds:
            v = d.loc[d["condition"] == c, "_y"].to_numpy()
            if len(v):
                ax.errorbar([pos[c] + 0.12], [v.mean()], yerr=[v.std(ddof=1)] if len(v) > 1 else None, fmt="s",
                            color="black", capsize=4, ms=6)
                ax.annotate(f"{v.mean():.4f}", (pos[c] + 0.16, v.mean()), fontsize=8, va="center")
        p = np.nan
        if len(conds) >= 2 and all(c in wide.columns for c in _CONDITIONS):
            both = wide[_CONDITIONS].dropna()
            p = _paired_p(both[_CONDITIONS[0]].to_numpy(), both[_CONDITIONS[1]].to_numpy())
        ax.set_xticks(range(len(conds)), conds)
        ax.set_xlim(-0.4, len(conds) - 0.4)
        ax.set_ylabel(label)
        ax.grid(axis="y", alpha=0.3)
        if len(wide) <= 10:
            ax.legend(fontsize=7, framealpha=0.9)
        ax.set_title(label + (f"\npaired t-test p = {p:.2g} (n = {len(both)})" if np.isfinite(p) else ""),
                     fontsize=10)
    fig.suptitle(titled("Effect of data augmentation on the test set (Supp. Table 3; lines join seeds, "
                        "black = mean ± std)", profile), fontsize=11)
    return save_figure(fig, out)


def organ_scaling(long: pd.DataFrame, out, model: str = "sctab", scheme: str = "donors", profile: str = "") -> Path:
    """Test macro F1 per organ system against the training cells of donor subsets (Fig. 2c): one line per
    organ, mean ± sd over seeds.

    ``long`` has columns ``model``, ``scheme``, ``train_cells``, ``organ``, ``f1_macro`` (one row per point and
    organ; rows sharing an organ and size are seeds)."""
    d = pd.DataFrame(long)
    if len(d):
        d = d[(d["model"] == model) & (d["scheme"] == scheme)]
    fig = new_figure(8.5, 5.0)
    ax = fig.add_subplot()
    if d.empty or "train_cells" not in d:
        no_data(ax, f"no per-organ scores of {model} ({scheme})")
    else:
        full = d[d["train_cells"] == d["train_cells"].max()].groupby("organ")["f1_macro"].mean()
        for i, organ in enumerate(full.sort_values(ascending=False).index):
            g = d[d["organ"] == organ].groupby("train_cells")["f1_macro"]
            m, s = g.mean(), g.std(ddof=1).fillna(0.0)
            ax.plot(m.index, m.values, "o-", ms=3, lw=1.3, color=CYCLE[i % len(CYCLE)],
                    label=f"{organ} ({len(d[d['organ'] == organ]['seed'].unique())} seeds)")
            ax.fill_between(m.index, (m - s).values, (m + s).values, color=CYCLE[i % len(CYCLE)], alpha=0.15)
        ax.set_xscale("log")
        ax.set_xlabel(f"training cells ({scheme} subsets)")
        ax.set_ylabel("test macro F1 of the organ system's cells")
        ax.legend(fontsize=7, ncol=2, loc="lower right")
        ax.grid(alpha=0.3)
    ax.set_title(titled(f"{model}: data scaling per organ system (Fig. 2c analogue)", profile), fontsize=10)
    return save_figure(fig, out)
