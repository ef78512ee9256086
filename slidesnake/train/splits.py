"""Patient-level, stratified k-fold splits with a validation set carved from each fold's training part.

A patient's slides never straddle train/val/test (slide-level splits leak patient identity), and the
validation set exists so that model selection never looks at the test fold (DESIGN §3). Folds are
stratified for every task kind: by class, by gene vector (iterative stratification, Sechidis et al.
2011, for mutations) and by event × time-quantile strata for survival.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
from sklearn.model_selection import KFold, StratifiedKFold

from slidesnake.errors import InputError

log = logging.getLogger(__name__)


class SplitError(InputError):
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
    test exactly once. The strata follow the columns of ``slides`` (a task's label table): a patient's
    most frequent ``label_column``; else its gene vector (``target_<gene>`` columns, iterative
    stratification); else event × time quantile (``time`` and ``event``); else unstratified.
    """
    for column in ("slide_id", "case_id"):
        if column not in slides.columns:
            raise SplitError(f"slide sheet has no {column!r} column; splits need slide_id and case_id")
    genes = [c for c in slides.columns if c.startswith("target_")]
    if label_column not in slides.columns and genes:
        return _multilabel_splits(slides, genes, k, val_fraction, seed)
    if label_column not in slides.columns and {"time", "event"} <= set(slides.columns):
        patients = _survival_strata(slides, k)
    else:
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
    assignments = []
    for rest_idx, test_idx in splitter.split(case_ids, strata if stratified else None):
        assignments.append((rest_idx, _pick_val(rest_idx, strata, val_fraction, rng), test_idx))
    return _long_table(slides, case_ids, assignments, "stratified" if stratified else "unstratified")


def _long_table(slides: pd.DataFrame, case_ids: np.ndarray, assignments: list, how: str) -> pd.DataFrame:
    """(slide_id, case_id, fold, split) rows from per-fold (rest, val, test) patient index arrays."""
    rows = []
    for fold, (rest_idx, val_idx, test_idx) in enumerate(assignments):
        split = {c: "train" for c in case_ids[rest_idx]}
        split.update({c: "val" for c in case_ids[val_idx]})
        split.update({c: "test" for c in case_ids[test_idx]})
        part = slides[["slide_id", "case_id"]].copy()
        part["fold"] = fold
        part["split"] = part["case_id"].map(split)
        rows.append(part)
    out = pd.concat(rows, ignore_index=True)
    log.info("made %d %s folds over %d patients, %d slides", len(assignments), how, len(case_ids), len(slides))
    return out


def _survival_strata(slides: pd.DataFrame, k: int) -> pd.Series:
    """Event × time-quantile stratum per patient, with as many time quantiles (≤ 4) as keep each
    stratum at ≥ k patients (1 quantile: event status only)."""
    per_case = slides.groupby("case_id").agg(time=("time", "first"), event=("event", "max")).sort_index()
    for n_bins in (4, 3, 2, 1):
        bins = pd.qcut(per_case["time"].rank(method="first"), n_bins, labels=False) if n_bins > 1 else 0
        strata = per_case["event"].astype(int).astype(str) + "_" + pd.Series(bins, index=per_case.index).astype(str)
        if strata.value_counts().min() >= k:
            return strata
    return strata


def iterative_stratification(y: np.ndarray, n_folds: int, rng: np.random.Generator) -> np.ndarray:
    """Fold index per row of a binary label matrix ``y`` (n, L), balancing every label's positives.

    Sechidis, Tsoumakas & Vlahavas (2011): repeatedly take the label with the fewest remaining
    positives and give each of its rows to the fold that most lacks that label (ties: the fold that
    most lacks rows, then at random); rows without any positive fill the emptiest folds.
    """
    y = np.asarray(y, dtype=int)
    n = len(y)
    want_rows = np.full(n_folds, n / n_folds)
    want_labels = np.tile(y.sum(axis=0) / n_folds, (n_folds, 1)).astype(float)
    folds = np.full(n, -1)
    remaining = np.ones(n, dtype=bool)
    while remaining.any():
        counts = y[remaining].sum(axis=0)
        if counts.sum() == 0:
            rows, label = rng.permutation(np.flatnonzero(remaining)), None
        else:
            label = int(np.argmin(np.where(counts > 0, counts, np.iinfo(int).max)))
            rows = rng.permutation(np.flatnonzero(remaining & (y[:, label] == 1)))
        for i in rows:
            need = want_rows if label is None else want_labels[:, label]
            best = np.flatnonzero(need == need.max())
            best = best[want_rows[best] == want_rows[best].max()]
            f = int(rng.choice(best))
            folds[i], remaining[i] = f, False
            want_rows[f] -= 1
            want_labels[f] -= y[i]
    return folds


def _multilabel_splits(slides: pd.DataFrame, genes: list[str], k: int, val_fraction: float, seed: int) -> pd.DataFrame:
    """Patient-level k folds and validation sets by iterative stratification of the gene vectors."""
    per_case = slides.groupby("case_id")[genes].max().sort_index()
    if len(per_case) < k:
        raise SplitError(f"{len(per_case)} patients cannot fill k={k} test folds; lower training.folds")
    rng = np.random.default_rng(seed)
    y = per_case.to_numpy(int)
    test_fold = iterative_stratification(y, k, rng)
    n_val = max(2, int(round(1 / val_fraction))) if val_fraction > 0 else 0
    assignments = []
    for fold in range(k):
        rest_idx, test_idx = np.flatnonzero(test_fold != fold), np.flatnonzero(test_fold == fold)
        val_idx = rest_idx[iterative_stratification(y[rest_idx], n_val, rng) == 0] if n_val else rest_idx[:0]
        assignments.append((rest_idx, val_idx, test_idx))
    return _long_table(slides, per_case.index.to_numpy(), assignments, "iteratively stratified (genes)")


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
