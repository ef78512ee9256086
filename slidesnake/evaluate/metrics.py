"""Per-patient metrics with stratified bootstrap 95% CIs, and the per-fold / mean ± std / pooled table.

Metrics follow DESIGN §3: accuracy, balanced accuracy, macro-F1, AUC (binary, macro one-vs-rest for
more classes) from scikit-learn; per-gene AUC and exact-match accuracy for mutations; C-index for
survival. Only test-split predictions are ever scored. Labels belong to patients, so by default a
patient's slide scores are averaged and every metric, bootstrap resample and ``n`` counts patients
(``evaluation.unit: slide`` scores slides, as most MIL papers report). Pooled over folds, AUC and
C-index count only pairs within one fold: scores of different fold models are not on one scale.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

import numpy as np
import pandas as pd
from sklearn.metrics import confusion_matrix, roc_auc_score

from slidesnake.errors import InputError
from slidesnake.evaluate.survival import c_index
from slidesnake.tasks import Task

log = logging.getLogger(__name__)

UNITS = ("patient", "slide")


def classification_metrics(y_true: np.ndarray, prob: np.ndarray, groups: np.ndarray | None = None) -> dict[str, float]:
    """Accuracy, balanced accuracy, macro-F1 and AUC of class probabilities ``prob`` (n,) p1 or (n, C).

    AUC is NaN when ``y_true`` holds a single class (undefined, not 0.5). With ``groups`` (each
    prediction's fold) AUC counts positive/negative pairs within a group only (:func:`grouped_auc`).
    """
    y_true = np.asarray(y_true, dtype=int)
    prob = np.asarray(prob, dtype=float)
    if prob.ndim == 1:
        prob = np.stack([1 - prob, prob], axis=1)
    if len(y_true) == 0:
        return {key: float("nan") for key in ("accuracy", "balanced_accuracy", "macro_f1", "auc")}
    cm = confusion_matrix(y_true, prob.argmax(axis=1), labels=np.arange(prob.shape[1])).astype(float)
    return {**_confusion_metrics(cm), "auc": grouped_auc(y_true, prob, groups)}


def _confusion_metrics(cm: np.ndarray) -> dict[str, float]:
    """Accuracy, balanced accuracy (mean recall over classes present) and macro-F1.

    Macro-F1 averages over the classes present in the truth or the predictions (scikit-learn's
    ``f1_score(labels=union, average="macro", zero_division=0)``): a class absent from both is not a 0.
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
        "macro_f1": float(f1[f1_den > 0].mean()),
    }


def grouped_auc(y_true: np.ndarray, prob: np.ndarray, groups: np.ndarray | None = None) -> float:
    """ROC AUC over positive/negative pairs within each group (fold), summed over groups; NaN without pairs.

    Binary: sum over groups of AUC_g * P_g / sum of P_g (P_g = n_pos * n_neg, sklearn's AUC per group,
    ties half). Multi-class: the same per class one-vs-rest, then the macro mean over the classes that
    have pairs. Without ``groups`` this is sklearn's (macro one-vs-rest) AUC of all predictions.
    """
    y_true = np.asarray(y_true, dtype=int)
    prob = np.asarray(prob, dtype=float)
    groups = np.zeros(len(y_true)) if groups is None else np.asarray(groups).reshape(-1)
    classes = [1] if prob.shape[1] == 2 else range(prob.shape[1])
    aucs = []
    for c in classes:
        correct = pairs = 0.0
        for group in np.unique(groups):
            member = groups == group
            positive = y_true[member] == c
            n_pairs = float(positive.sum() * (~positive).sum())
            if n_pairs:
                correct += roc_auc_score(positive, prob[member, c]) * n_pairs
                pairs += n_pairs
        if pairs:
            aucs.append(correct / pairs)
    return float(np.mean(aucs)) if aucs else float("nan")


def multilabel_metrics(
    y_true: np.ndarray, prob: np.ndarray, genes: list[str] | tuple[str, ...], groups: np.ndarray | None = None
) -> dict[str, float]:
    """Per-gene AUC (``auc_<gene>``, pairs within a group only), their mean, and exact-match accuracy."""
    y_true = np.asarray(y_true, dtype=int).reshape(len(y_true), -1)
    prob = np.asarray(prob, dtype=float).reshape(len(prob), -1)
    out = {}
    for j, gene in enumerate(genes):
        out[f"auc_{gene}"] = grouped_auc(y_true[:, j], np.stack([1 - prob[:, j], prob[:, j]], axis=1), groups)
    aucs = [v for v in out.values() if not np.isnan(v)]
    out["mean_auc"] = float(np.mean(aucs)) if aucs else float("nan")
    out["exact_match"] = (
        float(np.mean(np.all((prob >= 0.5) == y_true.astype(bool), axis=1))) if len(y_true) else float("nan")
    )
    return out


def survival_metrics(y_true: np.ndarray, risk: np.ndarray, groups: np.ndarray | None = None) -> dict[str, float]:
    """C-index of predicted ``risk`` against ``y_true`` = (n, 2) columns (time, event), or (n, 3) with
    each prediction's fold as the third; with a fold (either way) only pairs within a fold are compared."""
    y_true = np.asarray(y_true, dtype=float)
    if groups is None and y_true.shape[1] > 2:
        groups = y_true[:, 2]
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
    ci = _bootstrap_many(y_true, prob, lambda y, p, g=None: {"value": metric_fn(y, p)}, n, seed, alpha)
    return ci["value"]


def _bootstrap_many(
    y_true: np.ndarray,
    prob: np.ndarray,
    metrics_fn: Callable[..., dict[str, float]],
    n: int,
    seed: int,
    alpha: float,
    groups: np.ndarray | None = None,
) -> dict[str, tuple[float, float]]:
    """One set of resamples of the rows (the evaluation unit) for every metric of ``metrics_fn``.

    Rows are resampled within strata (:func:`_strata`: class, or event status for survival), so every
    resample keeps the observed balance and no draw is degenerate (one class only), which would
    otherwise pull macro-F1 and balanced accuracy towards 0.5 on small test sets. ``groups`` (folds)
    travel with their rows and reach ``metrics_fn(y, p, groups)``.
    """
    y_true, prob = np.asarray(y_true), np.asarray(prob)
    rng = np.random.default_rng(seed)
    strata = _strata(y_true)
    draws: dict[str, list[float]] = {}
    for _ in range(n):
        idx = np.concatenate([rng.choice(members, len(members)) for members in strata])
        for key, value in metrics_fn(y_true[idx], prob[idx], None if groups is None else groups[idx]).items():
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


def _strata(y_true: np.ndarray) -> list[np.ndarray]:
    """Index groups to resample within: one per class for class labels, per event status for survival
    targets (time, event[, fold]), one group for gene matrices."""
    if y_true.ndim == 1 and np.issubdtype(y_true.dtype, np.integer):
        return [np.flatnonzero(y_true == c) for c in np.unique(y_true)]
    if y_true.ndim == 2 and np.issubdtype(y_true.dtype, np.floating) and y_true.shape[1] in (2, 3):
        events = y_true[:, 1]
        return [np.flatnonzero(events == e) for e in np.unique(events)]
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


def task_metrics(task: Task) -> Callable[..., dict[str, float]]:
    """The metric function (y_true, scores, groups=None) -> dict for ``task.kind``."""
    if task.kind == "classification":
        return classification_metrics
    if task.kind == "multilabel":
        return lambda y, p, groups=None: multilabel_metrics(y, p, task.genes, groups)
    return survival_metrics


def score_columns(predictions: pd.DataFrame) -> list[str]:
    """The score columns of a predictions table (``prob_*`` or ``risk``)."""
    return [c for c in predictions.columns if c.startswith("prob_") or c == "risk"]


def per_patient(task: Task, predictions: pd.DataFrame) -> pd.DataFrame:
    """One row per (fold, patient): the mean of the patient's slide scores, the patient's targets.

    Labels are per patient (a patient's slides share them), so a patient with two slides counts once.
    """
    if "case_id" not in predictions.columns:
        raise InputError(
            "predictions have no case_id column; per-patient evaluation needs it (or evaluation.unit: slide)"
        )
    keys = ["fold", "case_id"] if "fold" in predictions.columns else ["case_id"]
    scores = score_columns(predictions)
    targets = [c for c in task.target_columns if c in predictions.columns]
    spread = predictions.groupby(keys)[targets].nunique().max(axis=None) if targets else 1
    if spread > 1:
        log.warning("task %s: slides of one patient carry different targets; the first slide's is used", task.name)
    grouped = predictions.groupby(keys, sort=True)
    out = grouped[scores].mean().join(grouped[targets].first()).reset_index()
    return out


def evaluate_predictions(
    task: Task, prediction_files: list[str], n_bootstrap: int = 1000, seed: int = 0, unit: str = "patient"
) -> pd.DataFrame:
    """Score the test split of each fold's predictions file: :func:`evaluate_tables` of the files."""
    tables = ((str(path), pd.read_parquet(path)) for path in prediction_files)
    return evaluate_tables(task, tables, n_bootstrap=n_bootstrap, seed=seed, unit=unit)


def evaluate_tables(
    task: Task,
    tables: Iterable[tuple[str, pd.DataFrame]],
    n_bootstrap: int = 1000,
    seed: int = 0,
    unit: str = "patient",
) -> pd.DataFrame:
    """Score the test split of each fold's predictions (``(name, table)`` pairs, one per fold): one row per
    fold, rows "mean" and "std" over folds, and a row "pooled" over all folds' test predictions (pairs
    within a fold for AUC, C-index).

    ``unit`` "patient" (default) averages each patient's slide scores first; "slide" scores slides.
    Columns: fold, n (test patients or slides), each metric, and ``<metric>_ci_low`` / ``_ci_high``
    (stratified bootstrap 95% percentile CI over the unit; per fold and pooled, not for mean/std).
    """
    if unit not in UNITS:
        raise InputError(f"evaluation.unit is {unit!r}; use one of {UNITS}")
    metrics_fn = task_metrics(task)
    rows, pooled = [], []
    for name, predictions in tables:
        test = predictions[predictions["split"] == "test"]
        if test.empty:
            log.warning("%s has no test rows; fold skipped", name)
            continue
        if unit == "patient":
            test = per_patient(task, test)
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
    """Metric values and bootstrap CIs of one set of test predictions (one row per unit; folds as groups)."""
    groups = test["fold"].to_numpy() if "fold" in test.columns else None
    scored = metrics_with_ci(target_array(task, test), score_array(task, test), metrics_fn, n_bootstrap, seed, groups)
    return {"n": len(test), **scored}


def metrics_with_ci(
    y_true: np.ndarray,
    scores: np.ndarray,
    metrics_fn: Callable[..., dict[str, float]],
    n_bootstrap: int = 1000,
    seed: int = 0,
    groups: np.ndarray | None = None,
) -> dict[str, float]:
    """``metrics_fn(y_true, scores, groups)`` and, for ``n_bootstrap`` > 0, each metric's stratified
    bootstrap 95% CI as ``<metric>_ci_low`` / ``<metric>_ci_high`` (resampling the rows: the unit)."""
    row = dict(metrics_fn(y_true, scores, groups))
    for key, (low, high) in _bootstrap_many(y_true, scores, metrics_fn, n_bootstrap, seed, 0.05, groups).items():
        row[f"{key}_ci_low"], row[f"{key}_ci_high"] = low, high
    return row
