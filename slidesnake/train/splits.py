"""Patient-level, stratified k-fold splits with a validation set carved from each fold's training part.

A patient's slides never straddle train/val/test (slide-level splits leak patient identity), and the
validation set exists so that model selection never looks at the test fold (DESIGN §3).
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
from sklearn.model_selection import KFold, StratifiedKFold

log = logging.getLogger(__name__)


class SplitError(ValueError):
    """The slide sheet cannot be split as asked (too few patients, missing columns)."""


def make_splits(
    slides: pd.DataFrame,
    k: int = 5,
    val_fraction: float = 0.2,
    seed: int = 0,
    label_column: str = "label",
) -> pd.DataFrame:
    """Assign every slide to train/val/test in each of ``k`` folds, grouped and stratified by patient.

    Returns a long table (slide_id, case_id, fold, split) with k rows per slide; every patient is in
    test exactly once. A patient's stratum is its most frequent slide label; without ``label_column``
    in ``slides`` (e.g. survival) the folds are unstratified.
    """
    for column in ("slide_id", "case_id"):
        if column not in slides.columns:
            raise SplitError(f"slide sheet has no {column!r} column; splits need slide_id and case_id")
    patients = _patient_strata(slides, label_column)
    if len(patients) < k:
        raise SplitError(f"{len(patients)} patients cannot fill k={k} test folds; lower training.folds")
    rng = np.random.default_rng(seed)
    case_ids = patients.index.to_numpy()
    strata = patients.to_numpy()
    stratified = _can_stratify(strata, k)
    splitter = (
        StratifiedKFold(k, shuffle=True, random_state=seed) if stratified else KFold(k, shuffle=True, random_state=seed)
    )
    rows = []
    for fold, (rest_idx, test_idx) in enumerate(splitter.split(case_ids, strata if stratified else None)):
        val_idx = _pick_val(rest_idx, strata, val_fraction, rng)
        split = {c: "train" for c in case_ids[rest_idx]}
        split.update({c: "val" for c in case_ids[val_idx]})
        split.update({c: "test" for c in case_ids[test_idx]})
        part = slides[["slide_id", "case_id"]].copy()
        part["fold"] = fold
        part["split"] = part["case_id"].map(split)
        rows.append(part)
    out = pd.concat(rows, ignore_index=True)
    log.info(
        "made %d %s folds over %d patients, %d slides",
        k,
        "stratified" if stratified else "unstratified",
        len(case_ids),
        len(slides),
    )
    return out


def _patient_strata(slides: pd.DataFrame, label_column: str) -> pd.Series:
    """One stratum per patient: the mode of its slide labels, or a constant when unlabelled."""
    if label_column not in slides.columns:
        return pd.Series("all", index=pd.Index(sorted(slides["case_id"].unique()), name="case_id"))
    labels = slides[label_column].astype(str)
    return labels.groupby(slides["case_id"]).agg(lambda s: s.value_counts().index[0]).sort_index()


def _can_stratify(strata: np.ndarray, k: int) -> bool:
    """Stratify only when every class has at least k patients; otherwise fall back to plain KFold."""
    _, counts = np.unique(strata, return_counts=True)
    if len(counts) > 1 and counts.min() < k:
        log.warning("smallest class has %d patients < k=%d: folds are not stratified", counts.min(), k)
        return False
    return len(counts) > 1


def _pick_val(rest_idx: np.ndarray, strata: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Take ``fraction`` of each stratum of the non-test patients (at least one where it has two)."""
    picked = []
    for stratum in np.unique(strata[rest_idx]):
        members = rest_idx[strata[rest_idx] == stratum]
        n = int(round(fraction * len(members)))
        if fraction > 0 and len(members) >= 2:
            n = max(n, 1)
        n = min(n, len(members) - 1)
        picked.append(rng.permutation(members)[:n])
    return np.concatenate(picked) if picked else np.array([], dtype=int)
