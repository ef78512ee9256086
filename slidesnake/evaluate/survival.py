"""Survival evaluation: concordance index (lifelines) and Kaplan-Meier curves by predicted risk group.

Risk groups split at the median predicted risk, the usual way a MIL survival model is shown to
stratify patients; across folds the split is made within each fold, because risks of models trained
on different folds are not on one scale.
"""

from __future__ import annotations

import numpy as np
from lifelines import KaplanMeierFitter
from lifelines.statistics import logrank_test
from lifelines.utils.concordance import _concordance_summary_statistics


def c_index(time: np.ndarray, event: np.ndarray, risk: np.ndarray, groups: np.ndarray | None = None) -> float:
    """Harrell's C-index of ``risk`` (higher = earlier death); NaN when no pair is comparable.

    With ``groups`` (each prediction's fold) only pairs within one group count: risks of models
    trained on different folds are not on one scale, so a pair across folds would compare the
    models' offsets, not the patients (pooling them gave C < 0.5 for every model on the demo).
    """
    time, event, risk = (np.asarray(a, dtype=float).reshape(-1) for a in (time, event, risk))
    groups = np.zeros(len(time)) if groups is None else np.asarray(groups).reshape(-1)
    correct = tied = pairs = 0
    for group in np.unique(groups):
        member = groups == group
        # lifelines' pair counts (its public concordance_index returns only their ratio)
        counts = _concordance_summary_statistics(time[member], -risk[member], event[member])
        correct, tied, pairs = correct + counts[0], tied + counts[1], pairs + counts[2]
    return float((correct + tied / 2) / pairs) if pairs else float("nan")


def risk_groups(risk: np.ndarray) -> np.ndarray:
    """1 for risk above the median ("high"), else 0."""
    risk = np.asarray(risk, dtype=float)
    return (risk > np.median(risk)).astype(int)


def fold_risk_groups(risk: np.ndarray, fold: np.ndarray) -> np.ndarray:
    """:func:`risk_groups` applied within each fold, so every fold's model splits its own test set."""
    risk, fold = np.asarray(risk, dtype=float), np.asarray(fold)
    groups = np.zeros(len(risk), dtype=int)
    for value in np.unique(fold):
        sel = fold == value
        groups[sel] = risk_groups(risk[sel])
    return groups


def logrank_p(time: np.ndarray, event: np.ndarray, groups: np.ndarray) -> float:
    """Log-rank test p-value between the two risk groups (NaN if one group is empty)."""
    time, event, groups = np.asarray(time, float), np.asarray(event, int), np.asarray(groups, int)
    if len(groups) == 0 or groups.min() == groups.max():
        return float("nan")
    result = logrank_test(time[groups == 0], time[groups == 1], event[groups == 0], event[groups == 1])
    return float(result.p_value)


def plot_km(ax, time: np.ndarray, event: np.ndarray, risk: np.ndarray, title: str = "") -> float:
    """Draw Kaplan-Meier curves of low/high predicted-risk groups (median split) on ``ax``; return the log-rank p."""
    return plot_km_groups(ax, time, event, risk_groups(risk), title)


def plot_km_groups(ax, time: np.ndarray, event: np.ndarray, groups: np.ndarray, title: str = "") -> float:
    """Draw Kaplan-Meier curves of given low (0) / high (1) risk groups on ``ax``; return the log-rank p."""
    time, event, groups = np.asarray(time, float), np.asarray(event, int), np.asarray(groups, int)
    for value, name in ((0, "low risk"), (1, "high risk")):
        sel = groups == value
        if sel.any():
            KaplanMeierFitter().fit(time[sel], event[sel], label=f"{name} (n={sel.sum()})").plot_survival_function(
                ax=ax, ci_show=False
            )
    p = logrank_p(time, event, groups)
    ax.set_title(f"{title} log-rank p={p:.3g}".strip())
    ax.set_xlabel("time")
    ax.set_ylabel("survival probability")
    return p
