"""The comparison table: every (task, model, encoder) on the same splits, one row each.

Users compare models on a cohort in one place; the table keeps the numbers (mean, std over folds,
and the pooled out-of-fold value with its bootstrap CI) and a readable "mean ± std" column per metric.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import pandas as pd

META_COLUMNS = ("fold", "n")


def compare_metrics(entries: Iterable[tuple[str, str, str, str | os.PathLike]]) -> pd.DataFrame:
    """One row per (task, model, encoder, metrics.csv): ``<m>_mean``, ``<m>_std``, ``<m>`` as text, pooled CI."""
    rows = []
    for task, model, encoder, path in entries:
        table = pd.read_csv(path, dtype={"fold": str}).set_index("fold")
        metrics = [c for c in table.columns if c not in META_COLUMNS and not c.endswith(("_ci_low", "_ci_high"))]
        folds = table.drop(index=["mean", "std", "pooled"], errors="ignore")
        row: dict[str, object] = {"task": task, "model": model, "encoder": encoder, "folds": len(folds)}
        for metric in metrics:
            mean, std = table.at["mean", metric], table.at["std", metric]
            row[metric] = _mean_text(mean, std, int(folds[metric].notna().sum()), len(folds))
            row[f"{metric}_mean"], row[f"{metric}_std"] = mean, std
            if "pooled" in table.index:
                row[f"{metric}_pooled"] = table.at["pooled", metric]
                row[f"{metric}_pooled_ci"] = (
                    f"[{table.at['pooled', f'{metric}_ci_low']:.3f}, {table.at['pooled', f'{metric}_ci_high']:.3f}]"
                )
        rows.append(row)
    return pd.DataFrame(rows)


def _mean_text(mean: float, std: float, defined: int, folds: int) -> str:
    """The readable "mean ± std"; it says over how many folds when the metric is undefined in some (one-class test splits)."""
    if defined == 0:
        return "n/a"
    text = f"{mean:.3f} ± {std:.3f}" if defined > 1 else f"{mean:.3f}"
    return text if defined == folds else f"{text} ({defined}/{folds} folds)"
