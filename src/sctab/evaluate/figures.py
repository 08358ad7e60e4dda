"""Figures of the paper's evaluation results (Fig. 1c-e, 1g, Supp. Fig. 5) from plain data; the scaling and
augmentation experiments' figures (Fig. 2b-d/f, 3d) are in ``sctab.experiments.figures``.

Every function takes dicts / numpy arrays / pandas frames, writes one PNG to ``out`` (parents are made)
and returns its Path. Nothing here loads a model or touches pyplot's global state: figures are built
with the object-oriented API on the Agg canvas, so the module is safe in worker processes and headless
runs. NaN values are skipped (shown as gaps or "n/a"), never a crash; an input with nothing to plot
gives a figure that says so.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

DPI = 120
PAPER_NOTE = "paper (full census, 22.2 M cells)"

_DISPLAY = {"sctab": "scTab", "xgboost": "XGBoost", "mlp": "MLP", "linear": "Linear", "celltypist": "CellTypist"}
MODEL_COLORS = {"sctab": "#1f77b4", "linear": "#ff7f0e", "mlp": "#2ca02c", "xgboost": "#d62728",
                "celltypist": "#9467bd"}
CYCLE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
         "#17becf"]


# ----------------------------------------------------------------- helpers (experiments/figures.py uses them too)


def display_name(name: str) -> str:
    """'sctab' -> 'scTab', 'xgboost' -> 'XGBoost'; anything else is returned as is."""
    return _DISPLAY.get(str(name).lower(), str(name))


def titled(text: str, profile: str) -> str:
    return f"{text}\nprofile: {profile}" if profile else text


def new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, out) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=DPI, format="png")
    return out


def _finite(x) -> bool:
    try:
        return x is not None and bool(np.isfinite(float(x)))
    except (TypeError, ValueError):
        return False


def _mean_std(v) -> tuple[float, float]:
    """A float, or a paper entry {"mean", "std"} -> (mean, std); NaN where missing."""
    if isinstance(v, Mapping):
        m, s = v.get("mean"), v.get("std")
    else:
        m, s = v, None
    return (float(m) if _finite(m) else np.nan), (float(s) if _finite(s) else np.nan)


def model_color(name: str, i: int) -> str:
    return MODEL_COLORS.get(str(name).lower(), CYCLE[i % len(CYCLE)])


def no_data(ax, text: str = "no data") -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=11, color="0.4")
    ax.set_xticks([])
    ax.set_yticks([])


def _f1_ylim(values: Sequence[float], headroom: float = 1.15) -> tuple[float, float]:
    vals = [v for v in values if _finite(v)]
    top = max(vals) if vals else 1.0
    return 0.0, min(1.25, max(0.1, top * headroom))


# ----------------------------------------------------------------------------------------- Fig. 1c


def model_comparison(f1: dict[str, float], out, paper: dict[str, float] | None = None, profile: str = "") -> Path:
    """Bar chart of test macro F1 per model (Fig. 1c); paper values as hatched bars beside ours.

    ``paper`` values may be floats or ``{"mean", "std"}`` entries (e.g. ``PAPER["model_comparison"]``), in
    which case the std is drawn as an error bar. Models are ordered by our F1, best first; a model only the
    paper has is shown with "n/a" for ours.
    """
    paper = paper or {}
    ours = {k: _mean_std(v)[0] for k, v in f1.items()}
    theirs = {k: _mean_std(v) for k, v in paper.items()}
    names = sorted(ours, key=lambda k: (not _finite(ours[k]), -ours[k] if _finite(ours[k]) else 0))
    names += [k for k in theirs if k not in ours]

    fig = new_figure(max(5.5, 1.3 * len(names) + 2.5), 4.6)
    ax = fig.add_subplot()
    if not names:
        no_data(ax)
    else:
        x = np.arange(len(names))
        w = 0.38 if theirs else 0.6
        xo = x - w / 2 if theirs else x
        vals = np.array([ours.get(k, np.nan) for k in names], dtype=float)
        colors = [model_color(k, i) for i, k in enumerate(names)]
        bars = ax.bar(xo, np.nan_to_num(vals, nan=0.0), w, color=colors, edgecolor="black", linewidth=0.6,
                      label=f"ours ({profile})" if profile else "ours")
        for b, v in zip(bars, vals):
            ax.text(b.get_x() + b.get_width() / 2, (v if np.isfinite(v) else 0) + 0.01,
                    f"{v:.4f}" if np.isfinite(v) else "n/a", ha="center", va="bottom", fontsize=8,
                    rotation=90 if len(names) > 6 else 0)
        all_vals = list(vals)
        if theirs:
            pm = np.array([theirs.get(k, (np.nan, np.nan))[0] for k in names])
            ps = np.array([theirs.get(k, (np.nan, np.nan))[1] for k in names])
            pb = ax.bar(x + w / 2, np.nan_to_num(pm, nan=0.0), w, color="white", edgecolor=colors, hatch="///",
                        linewidth=1.0, label=PAPER_NOTE)
            ok = np.isfinite(pm) & np.isfinite(ps)
            if ok.any():
                ax.errorbar((x + w / 2)[ok], pm[ok], yerr=ps[ok], fmt="none", ecolor="black", capsize=3, lw=1)
            for b, v in zip(pb, pm):
                if np.isfinite(v):
                    ax.text(b.get_x() + b.get_width() / 2, v + 0.01, f"{v:.4f}", ha="center", va="bottom",
                            fontsize=8, color="0.3", rotation=90 if len(names) > 6 else 0)
            all_vals += list(pm)
        ax.set_xticks(x, [display_name(k) for k in names], rotation=30 if len(names) > 5 else 0,
                      ha="right" if len(names) > 5 else "center")
        ax.set_ylim(*_f1_ylim(all_vals, 1.3))
        ax.set_ylabel("macro F1 (test set)")
        ax.legend(loc="upper right", fontsize=8, framealpha=0.9, ncol=2)
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
    ax.set_title(titled("Test macro F1 per model (Fig. 1c)", profile), fontsize=11)
    return save_figure(fig, out)


# ----------------------------------------------------------------------------------------- Fig. 1d


def organ_f1(per_organ: dict[str, dict[str, float]], out, models: Sequence[str] = ("sctab", "linear"),
             profile: str = "") -> Path:
    """Grouped bars of macro F1 per organ system for two (or more) models (Fig. 1d).

    ``per_organ`` is ``{model: {organ: f1}}``. Organs are the union over ``models``, sorted by the first
    model's F1 (best first; organs it lacks go last). A missing or NaN value leaves a gap marked "n/a".
    """
    models = [m for m in models]
    data = {m: {o: _mean_std(v)[0] for o, v in (per_organ.get(m) or {}).items()} for m in models}
    organs: list[str] = []
    for m in models:
        organs += [o for o in data[m] if o not in organs]
    first = data[models[0]] if models else {}
    organs.sort(key=lambda o: (not _finite(first.get(o)), -first[o] if _finite(first.get(o)) else 0, str(o)))

    fig = new_figure(max(6.0, 0.55 * len(organs) * max(1, len(models)) / 2 + 3), 4.8)
    ax = fig.add_subplot()
    if not organs:
        no_data(ax)
    else:
        x = np.arange(len(organs))
        w = 0.8 / max(1, len(models))
        all_vals = []
        for i, m in enumerate(models):
            vals = np.array([data[m].get(o, np.nan) for o in organs], dtype=float)
            all_vals += list(vals)
            pos = x - 0.4 + w * (i + 0.5)
            label = display_name(m) + ("" if np.isfinite(vals).any() else " (no data)")
            ax.bar(pos, np.where(np.isfinite(vals), vals, 0.0), w, color=model_color(m, i), label=label,
                   edgecolor="black", linewidth=0.4)
            for p, v in zip(pos, vals):
                if not np.isfinite(v):
                    ax.text(p, 0.01, "n/a", ha="center", va="bottom", fontsize=6, rotation=90, color="0.35")
        ax.set_xticks(x, [str(o) for o in organs], rotation=45, ha="right", fontsize=9)
        ax.set_ylim(*_f1_ylim(all_vals, 1.25))
        ax.set_ylabel("macro F1 (test set)")
        ax.set_xlabel("organ system")
        ax.legend(fontsize=8, loc="upper right", framealpha=0.9, ncol=len(models))
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
    ax.set_title(titled("Test macro F1 per organ system (Fig. 1d)", profile), fontsize=11)
    return save_figure(fig, out)


# ----------------------------------------------------------------------------------------- Fig. 1e


def _base_model(name: str) -> str:
    return str(name).split(" seed")[0].strip()


def validation_curves(histories: dict[str, pd.DataFrame], out, profile: str = "") -> Path:
    """Validation loss and validation macro F1 per epoch, one line per model (Fig. 1e).

    The frames are our ``history.csv`` (columns ``epoch``, ``val_loss``, ``val_f1_macro``). Members of an
    ensemble passed as "sctab seed 0", "sctab seed 1", ... share a colour; each model's best F1 epoch is
    starred. Single-epoch histories show as a marker.
    """
    fig = new_figure(11.0, 4.4)
    axes = fig.subplots(1, 2)
    cols = [("val_loss", "validation loss (cross-entropy)"), ("val_f1_macro", "validation macro F1")]
    bases: list[str] = []
    for name in histories:
        if _base_model(name) not in bases:
            bases.append(_base_model(name))
    styles = ["-", "--", ":", "-."]
    member = {b: 0 for b in bases}
    plotted = [False, False]
    for name, h in histories.items():
        if h is None or len(h) == 0:
            continue
        h = pd.DataFrame(h)
        b = _base_model(name)
        color = model_color(b, bases.index(b))
        ls = styles[member[b] % len(styles)]
        member[b] += 1
        x = pd.to_numeric(h["epoch"], errors="coerce") if "epoch" in h else pd.Series(np.arange(len(h)))
        order = np.argsort(x.to_numpy(), kind="stable")
        for j, (ax, (col, _)) in enumerate(zip(axes, cols)):
            if col not in h:
                continue
            y = pd.to_numeric(h[col], errors="coerce").to_numpy()[order]
            xs = x.to_numpy()[order]
            if not np.isfinite(y).any():
                continue
            ax.plot(xs, y, ls, color=color, marker="o" if len(xs) <= 40 else None, ms=3, lw=1.4,
                    label=display_name(name) if name == b else f"{display_name(b)}{str(name)[len(b):]}")
            plotted[j] = True
            if col == "val_f1_macro":
                k = int(np.nanargmax(y))
                ax.plot([xs[k]], [y[k]], "*", color=color, ms=11, mec="black", mew=0.5)
    for ax, (col, label), ok in zip(axes, cols, plotted):
        if not ok:
            no_data(ax, f"no {col}")
        else:
            ax.set_xlabel("epoch")
            ax.set_ylabel(label)
            ax.grid(alpha=0.3)
            ax.xaxis.get_major_locator().set_params(integer=True)
            ax.legend(fontsize=7, framealpha=0.9)
        ax.set_title(label, fontsize=10)
    fig.suptitle(titled("Validation curves per epoch (Fig. 1e; star = best F1 epoch)", profile), fontsize=11)
    return save_figure(fig, out)


# ----------------------------------------------------------------------------------------- Fig. 1g


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    if len(a) < 3:
        return np.nan
    ra, rb = pd.Series(a).rank().to_numpy(), pd.Series(b).rank().to_numpy()
    if ra.std() == 0 or rb.std() == 0:
        return np.nan
    return float(np.corrcoef(ra, rb)[0, 1])


def _label_points(ax, labels: list[str], x: np.ndarray, y: np.ndarray, fontsize: float = 7) -> None:
    """Name points, choosing for each label the first of a few offsets whose box hits no earlier label."""
    ax.get_xlim(), ax.get_ylim()  # settle autoscaling so transData is final
    px = ax.transData.transform(np.column_stack([x, y])) if len(x) else np.empty((0, 2))
    pt = DPI / 72.0
    h = fontsize * 1.25 * pt
    cands = [(5, 4), (5, -11), (-5, 4), (-5, -11), (5, 15), (5, -22), (-5, 15), (-5, -22), (5, 26), (5, -33)]
    placed: list[tuple[float, float, float, float]] = []
    for text, (cx, cy), xv, yv in zip(labels, px, x, y):
        w = len(text) * fontsize * 0.58 * pt
        choice = cands[0]
        for dx, dy in cands:
            x0 = cx + dx * pt - (w if dx < 0 else 0)
            box = (x0, cy + dy * pt, x0 + w, cy + dy * pt + h)
            if all(box[2] < b[0] or box[0] > b[2] or box[3] < b[1] or box[1] > b[3] for b in placed):
                choice = (dx, dy)
                break
        dx, dy = choice
        x0 = cx + dx * pt - (w if dx < 0 else 0)
        placed.append((x0, cy + dy * pt, x0 + w, cy + dy * pt + h))
        ax.annotate(text, (xv, yv), xytext=(dx, dy), textcoords="offset points", fontsize=fontsize, color="0.15",
                    ha="right" if dx < 0 else "left", va="bottom",
                    arrowprops={"arrowstyle": "-", "color": "0.6", "lw": 0.5})


def f1_vs_training_cells(per_class_f1: dict[str, float], train_counts: dict[str, int], out, model: str = "sctab",
                         profile: str = "", n_label: int = 6) -> Path:
    """Per-cell-type test F1 against the number of training cells of that type, log x (Fig. 1g).

    Cell types in both dicts with a finite F1 and a positive count are drawn; the ``n_label`` worst are
    named. Marginal histograms as in the paper; Spearman's rho in the title.
    """
    keys = [k for k in per_class_f1 if k in train_counts and _finite(per_class_f1[k]) and _finite(train_counts[k])
            and float(train_counts[k]) > 0]
    f = np.array([float(per_class_f1[k]) for k in keys])
    n = np.array([float(train_counts[k]) for k in keys])
    skipped = len(per_class_f1) - len(keys)

    fig = new_figure(7.5, 6.2)
    gs = fig.add_gridspec(2, 2, width_ratios=(4, 1), height_ratios=(1, 4))
    ax = fig.add_subplot(gs[1, 0])
    top = fig.add_subplot(gs[0, 0], sharex=ax)
    right = fig.add_subplot(gs[1, 1], sharey=ax)
    if not keys:
        no_data(ax)
        top.axis("off")
        right.axis("off")
    else:
        ax.scatter(n, f, s=18, alpha=0.75, color=model_color(model, 0), edgecolor="black", linewidth=0.3)
        ax.set_xscale("log")
        ax.set_ylim(-0.03, 1.05)
        ax.set_xlabel("training cells of the cell type (log scale)")
        ax.set_ylabel(f"test F1 of the cell type ({display_name(model)})")
        ax.grid(alpha=0.3, which="both")
        worst = np.argsort(f, kind="stable")[: max(0, n_label)]
        _label_points(ax, [str(keys[i])[:40] for i in worst], n[worst], f[worst])
        lo, hi = n.min(), n.max()
        bins = np.logspace(np.log10(lo), np.log10(hi), 20) if hi > lo else np.array([lo / 1.5, hi * 1.5])
        top.hist(n, bins=bins, color="0.6", edgecolor="white")
        top.set_ylabel("types", fontsize=8)
        top.tick_params(labelbottom=False, labelsize=7)
        right.hist(f, bins=np.linspace(0, 1, 21), orientation="horizontal", color="0.6", edgecolor="white")
        right.set_xlabel("types", fontsize=8)
        right.tick_params(labelleft=False, labelsize=7)
    rho = _spearman(n, f) if keys else np.nan
    extra = f"{len(keys)} cell types" + (f", Spearman rho = {rho:.2f}" if np.isfinite(rho) else "")
    if skipped:
        extra += f"; {skipped} without F1 or count left out"
    fig.suptitle(titled(f"Per-cell-type F1 vs training cells, {display_name(model)} (Fig. 1g)\n{extra}", profile),
                 fontsize=10)
    return save_figure(fig, out)


# ---------------------------------------------------------------------------------- Supp. Fig. 5


def _auroc(score_pos: np.ndarray, score_neg: np.ndarray) -> float:
    """P(score of a positive > score of a negative), ties counted half (Mann-Whitney U / n1 n0)."""
    n1, n0 = len(score_pos), len(score_neg)
    if n1 == 0 or n0 == 0:
        return np.nan
    r = pd.Series(np.concatenate([score_pos, score_neg])).rank().to_numpy()
    return float((r[:n1].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def uncertainty_embedding(xy: np.ndarray, uncertainty: np.ndarray, correct: np.ndarray, out,
                          profile: str = "") -> Path:
    """Cells on a 2-D embedding coloured by ensemble uncertainty, and uncertainty of right vs wrong predictions.

    ``xy`` is (n, 2) (e.g. a tSNE of the normalised test expression), ``uncertainty`` (n,) is
    1 - max ensemble probability, ``correct`` (n,) bool (Supp. Fig. 5). Cells with a NaN coordinate or
    uncertainty are left out. The AUROC of uncertainty for telling wrong from right predictions is given.
    """
    xy = np.asarray(xy, dtype=float)
    u = np.asarray(uncertainty, dtype=float).ravel()
    c = np.asarray(correct).astype(bool).ravel()
    if xy.ndim != 2 or xy.shape[1] != 2:
        raise ValueError(f"xy must have shape (n, 2), not {xy.shape}")
    if not (len(xy) == len(u) == len(c)):
        raise ValueError(f"xy has {len(xy)} rows, uncertainty {len(u)}, correct {len(c)}")
    keep = np.isfinite(xy).all(axis=1) & np.isfinite(u)
    xy, u, c = xy[keep], u[keep], c[keep]

    fig = new_figure(12.0, 5.0)
    a1, a2 = fig.subplots(1, 2, width_ratios=(1.25, 1))
    if len(u) == 0:
        no_data(a1)
        no_data(a2)
    else:
        order = np.argsort(u, kind="stable")  # most uncertain cells on top
        s = max(0.5, min(12.0, 3000.0 / len(u)))
        sc = a1.scatter(xy[order, 0], xy[order, 1], c=u[order], s=s, cmap="viridis", linewidths=0,
                        vmin=0, vmax=max(float(u.max()), 1e-6), rasterized=True)
        fig.colorbar(sc, ax=a1, label="uncertainty (1 - max mean probability)", shrink=0.85)
        a1.set_xlabel("embedding 1")
        a1.set_ylabel("embedding 2")
        a1.set_xticks([])
        a1.set_yticks([])
        a1.set_title(f"ensemble uncertainty, {len(u):,} test cells", fontsize=10)
        bins = np.linspace(0, max(float(u.max()), 1e-6), 31)
        for mask, label, color in ((c, "correct", "#2ca02c"), (~c, "wrong", "#d62728")):
            if mask.any():
                a2.hist(u[mask], bins=bins, density=True, alpha=0.55, color=color,
                        label=f"{label} (n={mask.sum():,}, median {np.median(u[mask]):.3f})")
        auc = _auroc(u[~c], u[c])
        a2.set_xlabel("uncertainty")
        a2.set_ylabel("density")
        a2.legend(fontsize=8)
        a2.grid(alpha=0.3)
        a2.set_title("uncertainty of correct vs wrong predictions"
                     + (f"\nAUROC (uncertainty flags wrong) = {auc:.3f}" if np.isfinite(auc) else ""), fontsize=10)
    fig.suptitle(titled("Ensemble uncertainty on the test set (Supp. Fig. 5)", profile), fontsize=11)
    return save_figure(fig, out)


def reliability_diagram(bins: list[dict], ece: float, out, profile: str = "") -> Path:
    """Accuracy against mean confidence per confidence bin, with the bin counts below; ECE in the title.

    ``bins`` are ``{"lo", "hi", "confidence", "accuracy", "count"}``; empty bins (count 0 or NaN accuracy)
    are left out.
    """
    rows = [b for b in bins if _finite(b.get("count")) and float(b["count"]) > 0 and _finite(b.get("accuracy"))]
    fig = new_figure(6.0, 6.4)
    a1, a2 = fig.subplots(2, 1, height_ratios=(3, 1), sharex=True)
    a1.plot([0, 1], [0, 1], "--", color="0.5", lw=1, label="perfect calibration")
    if rows:
        lo = np.array([float(b["lo"]) for b in rows])
        hi = np.array([float(b["hi"]) for b in rows])
        acc = np.array([float(b["accuracy"]) for b in rows])
        conf = np.array([float(b["confidence"]) if _finite(b.get("confidence")) else (b["lo"] + b["hi"]) / 2
                         for b in rows])
        cnt = np.array([float(b["count"]) for b in rows])
        a1.bar(lo, acc, hi - lo, align="edge", color="#1f77b4", edgecolor="black", linewidth=0.5, label="accuracy")
        a1.bar(lo, conf - acc, hi - lo, bottom=acc, align="edge", color="#d62728", alpha=0.3, edgecolor="#d62728",
               linewidth=0.5, label="gap to confidence")
        a1.plot(conf, acc, "o", color="black", ms=3)
        a2.bar(lo, cnt, hi - lo, align="edge", color="0.6", edgecolor="black", linewidth=0.4)
        if cnt.max() / max(cnt.min(), 1) > 100:
            a2.set_yscale("log")
    else:
        a1.text(0.5, 0.5, "no non-empty bins", ha="center", va="center", transform=a1.transAxes, color="0.4")
    a1.set_xlim(0, 1)
    a1.set_ylim(0, 1.02)
    a1.set_ylabel("accuracy")
    a1.legend(fontsize=8, loc="upper left")
    a1.grid(alpha=0.3)
    a2.set_xlabel("confidence (max predicted probability)")
    a2.set_ylabel("cells")
    a2.grid(alpha=0.3)
    ece_txt = f"ECE = {float(ece):.4f}" if _finite(ece) else "ECE = n/a"
    a1.set_title(titled(f"Reliability diagram, test set ({ece_txt})", profile), fontsize=11)
    return save_figure(fig, out)


def cell_type_embedding(xy: np.ndarray, labels, out, purity: float | None = None, chance: float | None = None,
                        top: int = 12, profile: str = "") -> Path:
    """Cells on a 2-D embedding coloured by annotated type (Fig. 1f's raw-feature panel): the ``top`` most
    frequent types in colour, the rest grey; the kNN label purity (and its chance level) in the title."""
    xy = np.asarray(xy, dtype=float)
    labels = np.asarray(labels).astype(str)
    if xy.ndim != 2 or xy.shape[1] != 2 or len(xy) != len(labels):
        raise ValueError(f"xy must have shape (n, 2) with one label per row, not {xy.shape} and {len(labels)}")
    fig = new_figure(9.5, 6.0)
    ax = fig.add_subplot()
    if not len(xy):
        no_data(ax)
    else:
        s = max(0.5, min(12.0, 3000.0 / len(xy)))
        counts = pd.Series(labels).value_counts()
        shown = list(counts.index[:top])
        rest = ~np.isin(labels, shown)
        if rest.any():
            ax.scatter(xy[rest, 0], xy[rest, 1], s=s, color="#cccccc", linewidths=0, rasterized=True,
                       label=f"{len(counts) - len(shown)} other types")
        for i, lab in enumerate(shown):
            m = labels == lab
            ax.scatter(xy[m, 0], xy[m, 1], s=s, color=CYCLE[i % len(CYCLE)], linewidths=0, rasterized=True,
                       label=f"{lab} ({m.sum():,})")
        ax.legend(fontsize=6.5, markerscale=3, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
        ax.set_xticks([])
        ax.set_yticks([])
    sub = "" if purity is None else f"; kNN label purity {purity:.2f} (random neighbours {chance:.2f})"
    ax.set_title(titled(f"test cells by annotated type{sub}", profile), fontsize=10)
    return save_figure(fig, out)
