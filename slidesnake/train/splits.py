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
        raise SplitError(f"{len(patients)} patients cannot fill k={k} test folds; lower train.folds")
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


# ------------------------------------------------------------------------------------ few-shot (HiVE-MIL protocol)

FEW_SHOT_N = (1, 2, 4, 8, 16)


def make_fewshot_splits(
    slides: pd.DataFrame,
    n_shots: int | list[int] = FEW_SHOT_N,
    repeats: int = 5,
    val_fraction: float = 0.3,
    test_fraction: float = 0.3,
    seed: int = 0,
    label_column: str = "label",
    balanced: bool = True,
) -> dict[int, pd.DataFrame]:
    """Few-shot splits: per repeat one val and one test set, and N training slides per class for each N.

    Patient-level throughout: val and test take whole patients, ``val/test_fraction`` of the smallest
    class's patients from every class when ``balanced`` (the seed's balanced protocol; otherwise that
    fraction of each class), and the same val and test patients serve every N of a repeat, so curves
    over N compare like with like. The training slides of N are drawn patient by patient (a patient's
    slides together, the last patient cut to fill exactly N) from one fixed order per repeat and class,
    so N's training set is contained in 2N's. Repeat r draws from ``default_rng([seed, r])``.
    Returns {N: table (slide_id, case_id, fold=repeat, split)}; slides not drawn are left out.
    """
    shots = sorted({int(n) for n in ([n_shots] if isinstance(n_shots, int) else n_shots)})
    if not shots or shots[0] < 1:
        raise SplitError(f"few-shot N must be >= 1, got {shots}")
    for column in ("slide_id", "case_id", label_column):
        if column not in slides.columns:
            raise SplitError(
                f"slide sheet has no {column!r} column; few-shot splits need slide_id, case_id and a label"
            )
    strata = _patient_strata(slides, label_column)
    classes = sorted(strata.unique())
    if len(classes) < 2:
        raise SplitError(f"few-shot splits need at least 2 classes in {label_column!r}, got {classes}")
    per_class = {c: strata.index[strata == c].to_numpy() for c in classes}
    smallest = min(len(v) for v in per_class.values())
    slides_of = slides.groupby("case_id")["slide_id"].agg(list).to_dict()
    out: dict[int, list[pd.DataFrame]] = {n: [] for n in shots}
    for repeat in range(repeats):
        rng = np.random.default_rng([seed, repeat])
        held: dict[str, str] = {}
        order: dict[str, np.ndarray] = {}
        for c in classes:
            members = rng.permutation(per_class[c])
            base = smallest if balanced else len(members)
            n_val = max(1, int(np.floor(val_fraction * base)))
            n_test = max(1, int(np.floor(test_fraction * base)))
            if n_val + n_test >= len(members):
                raise SplitError(
                    f"class {c!r} has {len(members)} patients: too few for {n_val} val + {n_test} test patients "
                    "and a training pool; lower the val/test fractions"
                )
            held.update({p: "test" for p in members[:n_test]})
            held.update({p: "val" for p in members[n_test : n_test + n_val]})
            order[c] = members[n_test + n_val :]
        base_rows = [(s, p, split) for p, split in held.items() for s in slides_of[p]]
        for n in shots:
            rows = list(base_rows)
            for c in classes:
                train = _first_slides(order[c], slides_of, n)
                if len(train) < n:
                    raise SplitError(
                        f"class {c!r} has {len(train)} training slides after val/test in repeat {repeat}; "
                        f"{n}-shot needs {n}: drop N={n} or lower the val/test fractions"
                    )
                rows += [(s, p, "train") for s, p in train]
            table = pd.DataFrame(rows, columns=["slide_id", "case_id", "split"])
            table.insert(2, "fold", repeat)
            out[n].append(table)
    log.info("made few-shot splits N=%s x %d repeats over %d patients", shots, repeats, len(strata))
    return {n: pd.concat(parts, ignore_index=True) for n, parts in out.items()}


def _first_slides(patients: np.ndarray, slides_of: dict, n: int) -> list[tuple[str, str]]:
    """The first ``n`` slides of the patients in the given order (a patient's slides in sheet order)."""
    picked: list[tuple[str, str]] = []
    for p in patients:
        for s in slides_of[p]:
            if len(picked) == n:
                return picked
            picked.append((s, p))
    return picked
