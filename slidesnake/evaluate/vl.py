"""Evaluation of the vision-language models: the zero-shot K sweep and prompt-set spread, tile-level
zero-shot on held-out synthetic tiles of known class, and the per-patient comparison table.

Everything goes through the trained models' code in :mod:`slidesnake.evaluate.metrics`: slide-level
``metrics.csv`` of zero-shot is :func:`~slidesnake.evaluate.metrics.evaluate_tables` of its test folds;
the comparison and the sweep use its per-patient table (mean of a patient's slide probabilities) and
its stratified bootstrap, with AUC, balanced accuracy and weighted F1 (95% CIs). Zero-shot rows pool
patients over folds, as one zero-shot scorer puts every slide on one scale; the supervised rows of the
comparison keep their folds, and their AUC counts positive/negative pairs within a fold only (five fold
models' scores are not on one scale), as the "pooled" row of their metrics.csv does.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import f1_score

from slidesnake.evaluate.metrics import (
    classification_metrics,
    evaluate_tables,
    metrics_with_ci,
    per_patient,
    score_array,
    target_array,
)
from slidesnake.models.vl.zeroshot import FULL_SET, TextBank, class_weights
from slidesnake.tasks import Task

log = logging.getLogger(__name__)

COMPARED = ("auc", "balanced_accuracy", "weighted_f1")


def vl_metrics(y_true: np.ndarray, prob: np.ndarray, groups: np.ndarray | None = None) -> dict[str, float]:
    """AUC, balanced accuracy (scikit-learn via the shared metrics) and weighted F1; with ``groups`` (folds)
    AUC counts pairs within a fold only, as the shared metrics do."""
    base = classification_metrics(y_true, prob, groups)
    pred = np.asarray(prob).argmax(axis=1)
    weighted = float(f1_score(y_true, pred, average="weighted", zero_division=0)) if len(y_true) else float("nan")
    return {"auc": base["auc"], "balanced_accuracy": base["balanced_accuracy"], "weighted_f1": weighted}


def _patients(predictions: pd.DataFrame, task: str, by_fold: bool = False) -> tuple[Task, pd.DataFrame]:
    """The classification task and its per-patient table: pooled over folds (no fold key), or per
    (fold, patient) with ``by_fold``."""
    spec = Task(task, "classification")
    if not by_fold:
        predictions = predictions.drop(columns="fold", errors="ignore")
    return spec, per_patient(spec, predictions)


def patient_metrics(
    predictions: pd.DataFrame, n_bootstrap: int = 1000, seed: int = 0, task: str = "zeroshot", by_fold: bool = False
) -> dict[str, float]:
    """Per-patient :func:`vl_metrics` with bootstrap 95% CIs (``<metric>_ci_low/high``) and ``n_patients``.

    ``by_fold``: the predictions come from one model per fold, so AUC counts pairs within a fold only.
    """
    spec, patients = _patients(predictions, task, by_fold)
    groups = patients["fold"].to_numpy() if by_fold else None
    y_true, scores = target_array(spec, patients), score_array(spec, patients)
    scored = metrics_with_ci(y_true, scores, vl_metrics, n_bootstrap, seed, groups)
    return {"n_patients": len(patients), "n_slides": len(predictions), **scored}


def fold_metrics(task: Task, predictions: pd.DataFrame, n_bootstrap: int, seed: int) -> pd.DataFrame:
    """The trained models' metrics table (per fold, mean, std, pooled) of a one-file zero-shot table."""
    folds = ((f"fold {fold}", part) for fold, part in predictions.groupby("fold", sort=True))
    return evaluate_tables(task, folds, n_bootstrap=n_bootstrap, seed=seed)


def sweep_table(scores: pd.DataFrame, labels: pd.DataFrame, slides: Sequence[str] | None = None) -> pd.DataFrame:
    """Per K: per-patient AUC / balanced accuracy / weighted F1 of the full prompt ensemble, and the median,
    quartiles, min and max over the sampled prompt sets (MI-Zero reports the median)."""
    frame = scores.merge(labels[["slide_id", "case_id", "target"]], on="slide_id", how="inner")
    if slides is not None:
        frame = frame[frame["slide_id"].isin(slides)]
    rows = []
    for k, by_k in frame.groupby("k", sort=True):
        values: dict[int, dict[str, float]] = {}
        for prompt_set, part in by_k.groupby("prompt_set"):
            spec, patients = _patients(part, "zeroshot")
            values[int(prompt_set)] = vl_metrics(target_array(spec, patients), score_array(spec, patients))
        row: dict[str, float] = {"k": int(k), "n_prompt_sets": len(values) - (FULL_SET in values)}
        sampled = [v for s, v in values.items() if s != FULL_SET]
        for metric in COMPARED:
            row[metric] = values[FULL_SET][metric] if FULL_SET in values else float("nan")
            if sampled:
                arr = np.array([v[metric] for v in sampled], float)
                arr = arr[~np.isnan(arr)]
                if len(arr):
                    q = np.quantile(arr, [0.0, 0.25, 0.5, 0.75, 1.0])
                    for name, value in zip(("min", "q25", "median", "q75", "max"), q):
                        row[f"{metric}_sets_{name}"] = float(value)
        rows.append(row)
    return pd.DataFrame(rows)


def tile_zeroshot(
    features: np.ndarray, kinds: np.ndarray, mags: np.ndarray, bank: TextBank, n_bootstrap: int = 1000, seed: int = 0
) -> pd.DataFrame:
    """Tile-level zero-shot on held-out tiles of known class: argmax of cosine to the class weights.

    ``features`` (N, D) image embeddings of the tiles, ``kinds`` their true tissue kind; tiles of kinds
    that are not prompt classes are left out. One row per magnification and one for all tiles.
    """
    keep = np.isin(kinds, bank.classes)
    if not keep.any():
        raise ValueError(f"no held-out tile is of a prompt class {bank.classes} (kinds: {sorted(set(kinds))})")
    feats = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    logits = feats @ class_weights(bank).T
    prob = np.exp((logits - logits.max(1, keepdims=True)) * bank.logit_scale)
    prob /= prob.sum(1, keepdims=True)
    y = np.array([bank.classes.index(k) if k in bank.classes else -1 for k in kinds])
    rows = []
    for mag in [*sorted(set(mags[keep].tolist())), "all"]:
        sel = keep & ((mags == mag) if mag != "all" else True)
        scored = metrics_with_ci(y[sel], prob[sel], vl_metrics, n_bootstrap, seed)
        rows.append({"magnification": mag, "n_tiles": int(sel.sum()), **scored})
    return pd.DataFrame(rows)


def comparison_table(
    zeroshot: Sequence[tuple[str, str, str, str | os.PathLike, str | os.PathLike | None]],
    supervised: Sequence[tuple[str, str, str, Sequence[str | os.PathLike]]],
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> pd.DataFrame:
    """One row per model: per-patient AUC / balanced accuracy / weighted F1 with CIs over the same
    test slides. ``zeroshot`` rows: (task, model, encoder, predictions.parquet, tiles.csv or None);
    ``supervised`` rows: (task, model, encoder, its folds' predictions.parquet files).

    When some zero-shot table covers fewer slides (an encoder aligned on one fold's train patients
    scores that fold's test slides only), every row is also scored on the slides every zero-shot table
    has (``*_common`` columns), so the comparison is on identical patients. The common set is taken over
    the zero-shot tables alone: a few-shot model's test slides (a few patients per repeat) would
    otherwise shrink it for every row.
    """
    tables: dict[tuple[str, str, str], pd.DataFrame] = {}
    tiles: dict[tuple[str, str, str], pd.DataFrame] = {}
    per_fold = {(task, model, encoder) for task, model, encoder, _ in supervised}
    for task, model, encoder, path, tile_csv in zeroshot:
        tables[(task, model, encoder)] = pd.read_parquet(path)
        if tile_csv is not None:
            tiles[(task, model, encoder)] = pd.read_csv(tile_csv)
    for task, model, encoder, files in supervised:
        parts = [pd.read_parquet(p) for p in files]
        test = pd.concat(parts, ignore_index=True)
        tables[(task, model, encoder)] = test[test["split"] == "test"]
    rows = []
    for task in sorted({key[0] for key in tables}):
        keys = [key for key in tables if key[0] == task]
        scorers = [key for key in keys if key not in per_fold] or keys
        common = set.intersection(*(set(tables[key]["slide_id"]) for key in scorers))
        restricted = len(common) < len(set.union(*(set(tables[key]["slide_id"]) for key in scorers)))
        for key in keys:
            table = tables[key]
            row: dict[str, object] = {"task": key[0], "model": key[1], "encoder": key[2]}
            by_fold = key in per_fold
            row.update(patient_metrics(table, n_bootstrap, seed, task, by_fold))
            if restricted:
                on_common = patient_metrics(table[table["slide_id"].isin(common)], n_bootstrap, seed, task, by_fold)
                for name, value in on_common.items():
                    row[f"{name}_common"] = value
            if key in tiles:
                every = tiles[key].set_index("magnification").loc["all"]
                for metric in COMPARED:
                    row[f"tile_{metric}"] = every[metric]
                    row[f"tile_{metric}_ci"] = f"[{every[f'{metric}_ci_low']:.3f}, {every[f'{metric}_ci_high']:.3f}]"
            rows.append(row)
    return pd.DataFrame(rows)
