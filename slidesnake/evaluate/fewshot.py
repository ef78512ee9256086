"""The few-shot curve (HiVE-MIL protocol, DESIGN §3): per-patient test metrics against N training slides per
class, mean ± std over the repeats, for the trained models and the zero-shot baseline.

Every N of a repeat shares that repeat's val and test patients (:func:`slidesnake.train.splits.make_fewshot_splits`),
so a point of the curve differs from its neighbours only in the training slides. A trained model's point is
the "mean" and "std" rows of its ``metrics.csv`` (:func:`~slidesnake.evaluate.metrics.evaluate_tables`, one
fold per repeat). Zero-shot trains nothing: its slide scores are scored on each repeat's test patients
through the same function, and it is one flat line over N.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from slidesnake.errors import InputError
from slidesnake.evaluate.figures import save_figure
from slidesnake.evaluate.metrics import evaluate_tables
from slidesnake.tasks import Task

log = logging.getLogger(__name__)

CURVE_METRICS = ("auc", "balanced_accuracy", "macro_f1")
METRIC_LABELS = {"auc": "AUC", "balanced_accuracy": "balanced accuracy", "macro_f1": "macro-F1"}
ZEROSHOT_SHOTS = 0  # the shots value of the zero-shot rows (it trains on no slide)


def repeat_test_tables(predictions: pd.DataFrame, splits: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """One ``(name, table)`` per repeat: the rows of ``predictions`` (every slide scored once, as zero-shot
    writes them) for that repeat's test slides, with ``fold`` = the repeat and ``split`` = test, ready for
    :func:`~slidesnake.evaluate.metrics.evaluate_tables`."""
    missing = {"slide_id", "fold", "split"} - set(splits.columns)
    if missing:
        raise InputError(
            f"few-shot splits have no column(s) {sorted(missing)}; expected slide_id, case_id, fold, split"
        )
    scored = predictions.drop(columns=["fold", "split"], errors="ignore").set_index("slide_id")
    tables = []
    for repeat, part in splits[splits["split"] == "test"].groupby("fold", sort=True):
        ids = [s for s in part["slide_id"] if s in scored.index]
        if len(ids) < len(part):
            log.warning("repeat %s: %d test slide(s) have no zero-shot score", repeat, len(part) - len(ids))
        table = scored.loc[ids].reset_index().assign(fold=int(repeat), split="test")
        tables.append((f"repeat {repeat}", table))
    return tables


def zeroshot_repeat_metrics(
    task: Task, predictions: pd.DataFrame, splits: pd.DataFrame, n_bootstrap: int = 1000, seed: int = 0
) -> pd.DataFrame:
    """The metrics table (per repeat, mean, std, pooled) of zero-shot scores on the few-shot test sets."""
    return evaluate_tables(task, repeat_test_tables(predictions, splits), n_bootstrap=n_bootstrap, seed=seed)


def curve_rows(model: str, shots: int, metrics: pd.DataFrame) -> dict[str, float | int | str]:
    """One point of the curve from a metrics table: repeats, mean test patients, and each metric's mean and std
    over the repeats (a repeat whose metric is undefined, e.g. AUC on one class, is left out of both)."""
    runs = metrics[~metrics["fold"].astype(str).isin(["mean", "std", "pooled"])]
    row: dict[str, float | int | str] = {"model": model, "shots": int(shots), "repeats": len(runs)}
    row["n_test"] = float(runs["n"].astype(float).mean()) if len(runs) else float("nan")
    for metric in CURVE_METRICS:
        values = runs[metric].astype(float).dropna() if metric in runs else pd.Series(dtype=float)
        row[f"{metric}_mean"] = float(values.mean()) if len(values) else float("nan")
        row[f"{metric}_std"] = float(values.std(ddof=1)) if len(values) > 1 else float("nan")
    return row


def curve_table(
    trained: Iterable[tuple[str, int, str | os.PathLike]], zeroshot: Sequence[tuple[str, pd.DataFrame]] = ()
) -> pd.DataFrame:
    """The curve as a table: one row per (model, N) from ``trained`` (model, N, its metrics.csv) and one row
    per zero-shot table (name, metrics table) at shots 0; sorted by model then N."""
    rows = [curve_rows(model, shots, pd.read_csv(path)) for model, shots, path in trained]
    rows += [curve_rows(name, ZEROSHOT_SHOTS, table) for name, table in zeroshot]
    if not rows:
        raise InputError("the few-shot curve has no point: training.fewshot.curve lists no model or no N")
    return pd.DataFrame(rows).sort_values(["model", "shots"], ignore_index=True)


def curve_figure(table: pd.DataFrame, out_png: str | os.PathLike, metric: str = "auc", title: str = "") -> None:
    """Per-patient ``metric`` against N (log2 axis), mean ± std over the repeats per model (each model's
    points shifted a little sideways so that equal values do not hide each other); zero-shot rows (shots 0)
    as a horizontal line with its ± std band."""
    fig = Figure(figsize=(6.4, 4.2))
    ax = fig.add_subplot()
    trained = table[table["shots"] > ZEROSHOT_SHOTS]
    shots = sorted(trained["shots"].unique()) or [1]
    models = sorted(trained["model"].unique())
    for i, model in enumerate(models):
        part = trained[trained["model"] == model].sort_values("shots")
        dodge = 2.0 ** (0.04 * (i - (len(models) - 1) / 2))  # side by side, so equal points stay visible
        ax.errorbar(
            part["shots"] * dodge, part[f"{metric}_mean"], yerr=part[f"{metric}_std"].fillna(0.0),
            marker="o", capsize=3, label=model,
        )  # fmt: skip
    for name, part in table[table["shots"] == ZEROSHOT_SHOTS].groupby("model", sort=True):
        mean, std = float(part[f"{metric}_mean"].iloc[0]), float(np.nan_to_num(part[f"{metric}_std"].iloc[0]))
        line = ax.axhline(mean, linestyle="--", color="0.3", label=f"{name} (no training)")
        ax.axhspan(mean - std, mean + std, color=line.get_color(), alpha=0.12)
    ax.set_xscale("log", base=2)
    ax.set_xticks(shots, [str(n) for n in shots])
    ax.set_xlabel("training slides per class (N)")
    ax.set_ylabel(f"per-patient {METRIC_LABELS.get(metric, metric)} (mean ± std over repeats)")
    ax.set_ylim(0.0, 1.05)
    ax.axhline(0.5, color="0.8", linewidth=0.8, zorder=0)
    ax.set_title(title or "Few-shot curve")
    ax.legend(loc="lower right", fontsize=8)
    save_figure(fig, out_png, dpi=110)
