"""Deep-ensemble uncertainty (paper, Methods "scTab model"; Supp. Fig. 5).

The ensemble's prediction is the mean of its members' softmax (:meth:`sctab.models.Ensemble.mean`); its uncertainty is
``1 - max mean probability`` (Lakshminarayanan et al., deep ensembles). How well uncertainty flags wrong
predictions is summarised by an AUROC (wrong = positive), and calibration by a reliability diagram with
equal-width confidence bins and its expected calibration error (ECE).
"""

from __future__ import annotations

import numpy as np


def uncertainty(mean_probs: np.ndarray) -> np.ndarray:
    """``1 - max_k p_k`` per cell (the paper's uncertainty score), float64."""
    p = np.asarray(mean_probs)
    if p.ndim != 2:
        raise ValueError(f"probabilities must be (cells, classes), got shape {p.shape}")
    if p.shape[0] == 0:
        return np.zeros(0, np.float64)
    return 1.0 - p.max(axis=1).astype(np.float64)


def uncertainty_auroc(uncertainty: np.ndarray, correct: np.ndarray) -> float:
    """AUROC of ``uncertainty`` for telling wrong predictions (positive) from right ones; 1.0 means every
    wrong prediction is more uncertain than every right one, 0.5 chance. NaN when all are right or all wrong."""
    from sklearn.metrics import roc_auc_score

    u = np.asarray(uncertainty, dtype=np.float64).ravel()
    ok = np.asarray(correct).astype(bool).ravel()
    if u.shape != ok.shape:
        raise ValueError(f"{u.size} uncertainties for {ok.size} correctness flags")
    if ok.all() or not ok.any():
        return float("nan")
    return float(roc_auc_score(~ok, u))


def calibration(confidence: np.ndarray, correct: np.ndarray, n_bins: int = 15) -> dict:
    """Reliability diagram over ``n_bins`` equal-width confidence bins on [0, 1].

    Bin i holds confidences in [i/n_bins, (i+1)/n_bins) (the last bin includes 1.0). Returns
    ``{"ece": sum_b count_b/n * |accuracy_b - confidence_b|, "mce": max over non-empty bins, "n": cells,
    "bins": [{"lo", "hi", "confidence", "accuracy", "count"}, ...]}``; empty bins have count 0 and
    confidence/accuracy None. ECE and MCE are NaN for no cells.
    """
    n_bins = int(n_bins)
    if n_bins < 1:
        raise ValueError(f"n_bins must be at least 1, got {n_bins}")
    c = np.asarray(confidence, dtype=np.float64).ravel()
    ok = np.asarray(correct).astype(bool).ravel()
    if c.shape != ok.shape:
        raise ValueError(f"{c.size} confidences for {ok.size} correctness flags")
    if c.size and (np.isnan(c).any() or c.min() < 0 or c.max() > 1):
        raise ValueError("confidences must lie in [0, 1]")
    idx = np.minimum((c * n_bins).astype(np.int64), n_bins - 1)
    count = np.bincount(idx, minlength=n_bins)
    conf_sum = np.bincount(idx, weights=c, minlength=n_bins)
    acc_sum = np.bincount(idx, weights=ok.astype(np.float64), minlength=n_bins)
    bins, gaps = [], []
    for b in range(n_bins):
        k = int(count[b])
        conf = float(conf_sum[b] / k) if k else None
        acc = float(acc_sum[b] / k) if k else None
        if k:
            gaps.append((k, abs(acc - conf)))
        bins.append({"lo": b / n_bins, "hi": (b + 1) / n_bins, "confidence": conf, "accuracy": acc, "count": k})
    n = int(c.size)
    ece = float(sum(k * g for k, g in gaps) / n) if n else float("nan")
    mce = float(max(g for _, g in gaps)) if gaps else float("nan")
    return {"ece": ece, "mce": mce, "n": n, "bins": bins}
