"""Evaluation of the vision-language models: the zero-shot K sweep and prompt-set spread, tile-level
zero-shot on held-out synthetic tiles of known class, and the per-patient comparison table.

Slide-level ``metrics.csv`` of zero-shot goes through the same code as trained models
(:func:`slidesnake.evaluate.metrics.evaluate_predictions`, one table per test fold). The comparison
here is **per patient** (mean of a patient's slide probabilities; bootstrap stratified by class over
patients): AUC, balanced accuracy and weighted F1 with 95% CIs.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import f1_score

from slidesnake.evaluate.metrics import _bootstrap_many, classification_metrics, evaluate_predictions
from slidesnake.models.vl.zeroshot import FULL_SET, TextBank, class_weights
from slidesnake.tasks import Task

log = logging.getLogger(__name__)

COMPARED = ("auc", "balanced_accuracy", "weighted_f1")


def prob_columns(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if c.startswith("prob_")]


def vl_metrics(y_true: np.ndarray, prob: np.ndarray, groups: np.ndarray | None = None) -> dict[str, float]:
    """AUC, balanced accuracy (scikit-learn via the shared metrics) and weighted F1; with ``groups`` (folds)
    AUC counts pairs within a fold only, as the shared metrics do."""
    base = classification_metrics(y_true, prob, groups)
    pred = np.asarray(prob).argmax(axis=1)
    weighted = float(f1_score(y_true, pred, average="weighted", zero_division=0)) if len(y_true) else float("nan")
    return {"auc": base["auc"], "balanced_accuracy": base["balanced_accuracy"], "weighted_f1": weighted}


def per_patient(predictions: pd.DataFrame) -> pd.DataFrame:
    """One row per patient: mean of its slides' prob_ columns, its target (one label per patient)."""
    columns = prob_columns(predictions)
    grouped = predictions.groupby("case_id", sort=True)
    out = grouped[columns].mean()
    out["target"] = grouped["target"].first()
    return out.reset_index()


def patient_metrics(predictions: pd.DataFrame, n_bootstrap: int = 1000, seed: int = 0) -> dict[str, float]:
    """Per-patient :func:`vl_metrics` with bootstrap 95% CIs (``<metric>_ci_low/high``) and ``n_patients``."""
    patients = per_patient(predictions)
    y, prob = patients["target"].to_numpy(int), patients[prob_columns(patients)].to_numpy(float)
    row: dict[str, float] = {"n_patients": len(patients), "n_slides": len(predictions), **vl_metrics(y, prob)}
    if n_bootstrap:
        for key, (low, high) in _bootstrap_many(y, prob, vl_metrics, n_bootstrap, seed, 0.05).items():
            row[f"{key}_ci_low"], row[f"{key}_ci_high"] = low, high
    return row


def fold_metrics(task: Task, predictions: pd.DataFrame, n_bootstrap: int, seed: int) -> pd.DataFrame:
    """The trained models' metrics table (per fold, mean, std, pooled) for a one-file zero-shot table,
    through the unchanged :func:`evaluate_predictions` (it reads one predictions file per fold)."""
    with tempfile.TemporaryDirectory() as tmp:
        files = []
        for fold, part in predictions.groupby("fold", sort=True):
            path = Path(tmp) / f"fold{fold}.parquet"
            part.to_parquet(path)
            files.append(str(path))
        return evaluate_predictions(task, files, n_bootstrap=n_bootstrap, seed=seed)


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
            patients = per_patient(part)
            values[int(prompt_set)] = vl_metrics(
                patients["target"].to_numpy(int), patients[prob_columns(patients)].to_numpy(float)
            )
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
        row: dict[str, object] = {"magnification": mag, "n_tiles": int(sel.sum()), **vl_metrics(y[sel], prob[sel])}
        if n_bootstrap:
            for key, (low, high) in _bootstrap_many(y[sel], prob[sel], vl_metrics, n_bootstrap, seed, 0.05).items():
                row[f"{key}_ci_low"], row[f"{key}_ci_high"] = low, high
        rows.append(row)
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
    scores that fold's test slides only), every row is also scored on those common slides
    (``*_common`` columns), so the comparison is on identical patients.
    """
    tables: dict[tuple[str, str, str], pd.DataFrame] = {}
    tiles: dict[tuple[str, str, str], pd.DataFrame] = {}
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
        common = set.intersection(*(set(tables[key]["slide_id"]) for key in keys))
        for key in keys:
            table = tables[key]
            row: dict[str, object] = {"task": key[0], "model": key[1], "encoder": key[2]}
            row.update(patient_metrics(table, n_bootstrap, seed))
            if len(common) < len(table):
                for name, value in patient_metrics(table[table["slide_id"].isin(common)], n_bootstrap, seed).items():
                    row[f"{name}_common"] = value
            if key in tiles:
                every = tiles[key].set_index("magnification").loc["all"]
                for metric in COMPARED:
                    row[f"tile_{metric}"] = every[metric]
                    row[f"tile_{metric}_ci"] = f"[{every[f'{metric}_ci_low']:.3f}, {every[f'{metric}_ci_high']:.3f}]"
            rows.append(row)
    return pd.DataFrame(rows)
