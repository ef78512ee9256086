"""Slide-level metrics with bootstrap 95% CIs, and the per-fold / mean ± std evaluation table.

Metrics follow DESIGN §3: accuracy, balanced accuracy, macro-F1, AUC (binary, macro one-vs-rest for
more classes) from scikit-learn; per-gene AUC and exact-match accuracy for mutations; C-index for
survival. Only test-split predictions are ever scored.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import pandas as pd
from sklearn.metrics import confusion_matrix, roc_auc_score

from slidesnake.evaluate.survival import c_index
from slidesnake.tasks import Task

log = logging.getLogger(__name__)


def classification_metrics(y_true: np.ndarray, prob: np.ndarray) -> dict[str, float]:
    """Accuracy, balanced accuracy, macro-F1 and AUC of class probabilities ``prob`` (n,) p1 or (n, C).

    AUC is NaN when ``y_true`` holds a single class (undefined, not 0.5).
    """
    y_true = np.asarray(y_true, dtype=int)
    prob = np.asarray(prob, dtype=float)
    if prob.ndim == 1:
        prob = np.stack([1 - prob, prob], axis=1)
    if len(y_true) == 0:
        return {key: float("nan") for key in ("accuracy", "balanced_accuracy", "macro_f1", "auc")}
    cm = confusion_matrix(y_true, prob.argmax(axis=1), labels=np.arange(prob.shape[1])).astype(float)
    return {**_confusion_metrics(cm), "auc": _auc(y_true, prob)}


def _confusion_metrics(cm: np.ndarray) -> dict[str, float]:
    """Accuracy, balanced accuracy (mean recall over classes present) and macro-F1 (zero_division=0).

    Derived from one sklearn confusion matrix because the bootstrap calls this 1,000 times per fold;
    tests check the values against accuracy_score / balanced_accuracy_score / f1_score.
    """
    tp = np.diag(cm)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    present = support > 0
    f1_den = support + predicted
    f1 = np.divide(2 * tp, f1_den, out=np.zeros_like(tp), where=f1_den > 0)
    return {
        "accuracy": float(tp.sum() / cm.sum()),
        "balanced_accuracy": float(np.mean(tp[present] / support[present])),
        "macro_f1": float(f1.mean()),
    }


def _auc(y_true: np.ndarray, prob: np.ndarray) -> float:
    present = np.unique(y_true)
    if len(present) < 2:
        return float("nan")
    if prob.shape[1] == 2:
        return float(roc_auc_score(y_true, prob[:, 1]))
    if len(present) < prob.shape[1]:
        # macro one-vs-rest over the classes present (sklearn's multi_class="ovr" needs all of them)
        return float(np.mean([roc_auc_score(y_true == c, prob[:, c]) for c in present]))
    return float(roc_auc_score(y_true, prob, multi_class="ovr", average="macro"))


def multilabel_metrics(y_true: np.ndarray, prob: np.ndarray, genes: list[str] | tuple[str, ...]) -> dict[str, float]:
    """Per-gene AUC (``auc_<gene>``), their mean, and exact-match accuracy of the 0.5-thresholded vector."""
    y_true = np.asarray(y_true, dtype=int).reshape(len(y_true), -1)
    prob = np.asarray(prob, dtype=float).reshape(len(prob), -1)
    out = {}
    for j, gene in enumerate(genes):
        column = y_true[:, j]
        out[f"auc_{gene}"] = (
            float(roc_auc_score(column, prob[:, j])) if 0 < column.sum() < len(column) else float("nan")
        )
    aucs = [v for v in out.values() if not np.isnan(v)]
    out["mean_auc"] = float(np.mean(aucs)) if aucs else float("nan")
    out["exact_match"] = (
        float(np.mean(np.all((prob >= 0.5) == y_true.astype(bool), axis=1))) if len(y_true) else float("nan")
    )
    return out


def survival_metrics(y_true: np.ndarray, risk: np.ndarray) -> dict[str, float]:
    """C-index of predicted ``risk`` against ``y_true`` = (n, 2) columns (time, event), or (n, 3) with
    each prediction's fold as the third: then only pairs within a fold are compared."""
    y_true = np.asarray(y_true, dtype=float)
    groups = y_true[:, 2] if y_true.shape[1] > 2 else None
    return {"c_index": c_index(y_true[:, 0], y_true[:, 1], np.asarray(risk, dtype=float).reshape(-1), groups)}


def bootstrap_ci(
    y_true: np.ndarray,
    prob: np.ndarray,
    metric_fn: Callable[[np.ndarray, np.ndarray], float],
    n: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> tuple[float, float]:
    """Percentile bootstrap (1 - alpha) CI of ``metric_fn(y_true, prob)`` over ``n`` resamples of cases.

    Resamples where the metric is undefined (NaN, e.g. AUC with one class) are left out.
    """
    ci = _bootstrap_many(y_true, prob, lambda y, p: {"value": metric_fn(y, p)}, n, seed, alpha)
    return ci["value"]


def _bootstrap_many(
    y_true: np.ndarray,
    prob: np.ndarray,
    metrics_fn: Callable[[np.ndarray, np.ndarray], dict[str, float]],
    n: int,
    seed: int,
    alpha: float,
) -> dict[str, tuple[float, float]]:
    """One set of resamples for every metric of ``metrics_fn`` (cheaper than one bootstrap per metric).

    Class labels (1-D integer targets) are resampled within each class, so every resample keeps the
    observed class balance and no draw is degenerate (one class only), which would otherwise pull
    macro-F1 and balanced accuracy towards 0.5 on small test sets.
    """
    y_true, prob = np.asarray(y_true), np.asarray(prob)
    rng = np.random.default_rng(seed)
    strata = _class_strata(y_true)
    draws: dict[str, list[float]] = {}
    for _ in range(n):
        idx = np.concatenate([rng.choice(members, len(members)) for members in strata])
        for key, value in metrics_fn(y_true[idx], prob[idx]).items():
            draws.setdefault(key, []).append(value)
    out = {}
    for key, values in draws.items():
        values_arr = np.asarray(values, dtype=float)
        values_arr = values_arr[~np.isnan(values_arr)]
        if len(values_arr) == 0:
            out[key] = (float("nan"), float("nan"))
        else:
            out[key] = (float(np.quantile(values_arr, alpha / 2)), float(np.quantile(values_arr, 1 - alpha / 2)))
    return out


def _class_strata(y_true: np.ndarray) -> list[np.ndarray]:
    """Index groups to resample within: one per class for class labels, one group otherwise."""
    if y_true.ndim == 1 and np.issubdtype(y_true.dtype, np.integer):
        return [np.flatnonzero(y_true == c) for c in np.unique(y_true)]
    return [np.arange(len(y_true))]


def target_array(task: Task, frame: pd.DataFrame) -> np.ndarray:
    """Ground truth of a label or predictions table: class index, gene matrix, or (time, event[, fold])."""
    if task.kind == "classification":
        return frame["target"].to_numpy(int)
    if task.kind == "multilabel":
        return frame[task.target_columns].to_numpy(int)
    return frame[["time", "event", "fold"] if "fold" in frame else ["time", "event"]].to_numpy(float)


def score_array(task: Task, predictions: pd.DataFrame) -> np.ndarray:
    """Predicted scores of a predictions table: class probabilities, per-gene probabilities, or risk."""
    if task.kind == "classification":
        return predictions[[c for c in predictions.columns if c.startswith("prob_")]].to_numpy(float)
    if task.kind == "multilabel":
        return predictions[[f"prob_{g}" for g in task.genes]].to_numpy(float)
    return predictions["risk"].to_numpy(float)


def task_metrics(task: Task) -> Callable[[np.ndarray, np.ndarray], dict[str, float]]:
    """The metric function (y_true, scores) -> dict for ``task.kind``."""
    if task.kind == "classification":
        return classification_metrics
    if task.kind == "multilabel":
        return lambda y, p: multilabel_metrics(y, p, task.genes)
    return survival_metrics


def evaluate_predictions(
    task: Task, prediction_files: list[str], n_bootstrap: int = 1000, seed: int = 0
) -> pd.DataFrame:
    """Score the test split of each fold's predictions: one row per fold, rows "mean" and "std" over
    folds, and a row "pooled" over all folds' test predictions.

    Columns: fold, n (test slides), each metric, and ``<metric>_ci_low`` / ``<metric>_ci_high``
    (bootstrap 95% percentile CI; per fold and pooled, not for mean/std).
    """
    metrics_fn = task_metrics(task)
    rows, pooled = [], []
    for path in prediction_files:
        predictions = pd.read_parquet(path)
        test = predictions[predictions["split"] == "test"]
        if test.empty:
            log.warning("%s has no test rows; fold skipped", path)
            continue
        pooled.append(test)
        rows.append({"fold": str(int(test["fold"].iloc[0])), **_scored(task, test, metrics_fn, n_bootstrap, seed)})
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    values = table.drop(columns=["fold"]).astype(float)
    summary = pd.DataFrame([values.mean(), values.std(ddof=1)])
    summary.loc[:, [c for c in summary.columns if c.endswith(("_ci_low", "_ci_high"))]] = np.nan
    summary.insert(0, "fold", ["mean", "std"])
    # Out-of-fold predictions of all folds together: the CI users quote for the cohort.
    all_test = {"fold": "pooled", **_scored(task, pd.concat(pooled), metrics_fn, n_bootstrap, seed)}
    return pd.concat([table, summary, pd.DataFrame([all_test])], ignore_index=True)


def _scored(task: Task, test: pd.DataFrame, metrics_fn, n_bootstrap: int, seed: int) -> dict[str, float]:
    """Metric values and bootstrap CIs of one set of test predictions."""
    y_true, scores = target_array(task, test), score_array(task, test)
    row: dict[str, float] = {"n": len(test), **metrics_fn(y_true, scores)}
    for key, (low, high) in _bootstrap_many(y_true, scores, metrics_fn, n_bootstrap, seed, 0.05).items():
        row[f"{key}_ci_low"], row[f"{key}_ci_high"] = low, high
    return row
