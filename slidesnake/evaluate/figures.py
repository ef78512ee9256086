"""Report figures from the per-fold predictions: ROC curves and Kaplan-Meier curves by predicted risk.

Only the test split of each fold is drawn, like the metrics table. Figures are drawn on a bare
matplotlib Figure (Agg canvas, no pyplot state), so they render the same on a headless cluster node.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from sklearn.metrics import roc_auc_score, roc_curve

from slidesnake.errors import InputError
from slidesnake.evaluate.metrics import classification_metrics, score_array, target_array
from slidesnake.evaluate.survival import fold_risk_groups, plot_km_groups
from slidesnake.io.atomic import atomic_path
from slidesnake.tasks import Task

log = logging.getLogger(__name__)

FPR_GRID = np.linspace(0.0, 1.0, 201)


class FigureInputError(InputError):
    """The task kind does not fit the figure asked for."""


def pooled_test_rows(prediction_files: Sequence[str | os.PathLike]) -> pd.DataFrame:
    """The test-split rows of all folds' predictions.parquet files, in file order."""
    frames = [pd.read_parquet(path) for path in prediction_files]
    frames = [frame[frame["split"] == "test"] for frame in frames]
    frames = [frame for frame in frames if not frame.empty]
    return (
        pd.concat(frames, ignore_index=True)
        if frames
        else pd.DataFrame(columns=["slide_id", "case_id", "fold", "split"])
    )


def macro_roc(y_true: np.ndarray, prob: np.ndarray) -> np.ndarray:
    """TPR on FPR_GRID of one classifier: the positive class (column 1) for two classes, else the
    mean of the one-vs-rest curves of the classes present (macro average, as the AUC)."""
    y_true, prob = np.asarray(y_true, dtype=int), np.asarray(prob, dtype=float)
    classes = [1] if prob.shape[1] == 2 else list(np.unique(y_true))
    curves = []
    for c in classes:
        fpr, tpr, _ = roc_curve(y_true == c, prob[:, c])
        curves.append(np.interp(FPR_GRID, fpr, tpr))
    tpr = np.mean(curves, axis=0)
    tpr[0] = 0.0
    return tpr


def roc_figure(
    prediction_files: Sequence[str | os.PathLike], task: Task, out_png: str | os.PathLike
) -> dict[str, float]:
    """Draw test-split ROC curves and write ``out_png``; return the AUCs shown in the legend.

    classification: one curve per fold (binary: positive class; multi-class: macro one-vs-rest) plus
    the mean curve; returns {"fold<k>": auc, ..., "mean": , "std": } (AUC as in the metrics table).
    multilabel: one curve per gene from the pooled test predictions; returns {gene: auc}.
    """
    if task.kind not in ("classification", "multilabel"):
        raise FigureInputError(f"task {task.name} is {task.kind}; ROC curves need a classification or multilabel task")
    test = pooled_test_rows(prediction_files)
    fig = Figure(figsize=(5.5, 5.0), dpi=100)
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=0.8, label="chance")
    aucs: dict[str, float] = {}
    if task.kind == "classification":
        curves = []
        for fold, frame in test.groupby("fold", sort=True):
            y_true, prob = target_array(task, frame), score_array(task, frame)
            auc = classification_metrics(y_true, prob)["auc"]
            aucs[f"fold{fold}"] = auc
            if np.isnan(auc):
                log.warning("task %s fold %s: test split holds one class; no ROC curve", task.name, fold)
                continue
            curves.append(macro_roc(y_true, prob))
            ax.plot(FPR_GRID, curves[-1], linewidth=1, alpha=0.5, label=f"fold {fold} (AUC = {auc:.3f})")
        values = np.array([v for v in aucs.values() if not np.isnan(v)])
        if len(values):
            aucs["mean"] = float(values.mean())
            aucs["std"] = float(values.std(ddof=1)) if len(values) > 1 else float("nan")
            spread = f" ± {aucs['std']:.3f}" if len(values) > 1 else ""
            ax.plot(
                FPR_GRID,
                np.mean(curves, axis=0),
                color="black",
                linewidth=2,
                label=f"mean (AUC = {aucs['mean']:.3f}{spread})",
            )
    else:
        y_true, prob = target_array(task, test), score_array(task, test)
        for j, gene in enumerate(task.genes):
            column = y_true[:, j] if len(test) else np.zeros(0, int)
            if not 0 < column.sum() < len(column):
                log.warning("task %s gene %s: pooled test labels hold one class; no ROC curve", task.name, gene)
                aucs[gene] = float("nan")
                continue
            aucs[gene] = float(roc_auc_score(column, prob[:, j]))
            fpr, tpr, _ = roc_curve(column, prob[:, j])
            ax.plot(fpr, tpr, linewidth=1.5, label=f"{gene} (AUC = {aucs[gene]:.3f})")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(f"{task.name}: ROC, test split ({len(test)} slides)")
    ax.legend(loc="lower right", fontsize=8)
    save_figure(fig, out_png)
    return aucs


def km_figure(prediction_files: Sequence[str | os.PathLike], task: Task, out_png: str | os.PathLike) -> float:
    """Kaplan-Meier curves of the pooled test split by predicted risk group; returns the log-rank p.

    Groups are the median split of ``risk`` within each fold (fold models' risks are not on one
    scale); the p-value (lifelines log-rank) is in the title. NaN when a group is empty.
    """
    if task.kind != "survival":
        raise FigureInputError(f"task {task.name} is {task.kind}; Kaplan-Meier curves need a survival task")
    test = pooled_test_rows(prediction_files)
    fig = Figure(figsize=(5.5, 4.5), dpi=100)
    ax = fig.add_subplot()
    if test.empty:
        log.warning(
            "task %s: no test predictions in %d files; empty Kaplan-Meier figure", task.name, len(prediction_files)
        )
        ax.set_title(f"{task.name}: no test predictions")
        save_figure(fig, out_png)
        return float("nan")
    groups = fold_risk_groups(test["risk"].to_numpy(float), test["fold"].to_numpy())
    p = plot_km_groups(ax, test["time"].to_numpy(float), test["event"].to_numpy(int), groups, title=f"{task.name}:")
    ax.set_xlabel(task.time)
    save_figure(fig, out_png)
    return p


def save_figure(fig: Figure, out_png: str | os.PathLike, dpi: float | None = None) -> None:
    """Lay out ``fig`` and write it as a PNG atomically (temp file + rename)."""
    fig.tight_layout()
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)


def report_jpeg(png: str | os.PathLike, out_jpg: str | os.PathLike, max_px: int = 1024, quality: int = 85) -> None:
    """A report copy of a figure: JPEG, longest side at most ``max_px`` (the full-size PNG stays a file).

    Transparency is flattened onto white (JPEG has no alpha); the aspect ratio is kept.
    """
    from PIL import Image

    with Image.open(png) as image:
        image.load()
        if image.mode in ("RGBA", "LA", "P"):
            rgba = image.convert("RGBA")
            flat = Image.new("RGB", rgba.size, (255, 255, 255))
            flat.paste(rgba, mask=rgba.getchannel("A"))
            image = flat
        else:
            image = image.convert("RGB")
        image.thumbnail((max_px, max_px), Image.Resampling.LANCZOS)
        with atomic_path(out_jpg) as tmp:
            image.save(tmp, format="JPEG", quality=quality, optimize=True, progressive=True)
