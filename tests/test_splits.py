"""make_splits: patient grouping, every patient tested once, stratification, determinism."""

import numpy as np
import pandas as pd
import pytest

from slidesnake.train.splits import SplitError, make_splits


def _sheet(n_patients=20, slides_per_patient=(1, 2, 3)):
    rows = []
    for p in range(n_patients):
        for s in range(slides_per_patient[p % len(slides_per_patient)]):
            rows.append({"slide_id": f"S{p}_{s}", "case_id": f"P{p}", "label": "A" if p < 12 else "B"})
    return pd.DataFrame(rows)


def test_patients_never_straddle_splits_and_each_is_tested_once():
    sheet = _sheet()
    folds = make_splits(sheet, k=4, val_fraction=0.25, seed=3)
    assert len(folds) == 4 * len(sheet)
    assert set(folds["split"]) == {"train", "val", "test"}
    per_fold_patient = folds.groupby(["fold", "case_id"])["split"].nunique()
    assert (per_fold_patient == 1).all()
    tested = folds[folds["split"] == "test"].groupby("case_id")["fold"].nunique()
    assert len(tested) == 20 and (tested == 1).all()


def test_folds_are_stratified_by_patient_label():
    folds = make_splits(_sheet(), k=4, val_fraction=0.25, seed=0)
    labels = _sheet().drop_duplicates("case_id").set_index("case_id")["label"]
    test = folds[folds["split"] == "test"].drop_duplicates(["fold", "case_id"])
    counts = test.assign(label=test["case_id"].map(labels)).groupby(["fold", "label"]).size().unstack()
    assert (counts["A"] == 3).all() and (counts["B"] == 2).all()  # 12 A / 8 B patients over 4 folds
    val = folds[folds["split"] == "val"].drop_duplicates(["fold", "case_id"])
    val_counts = val.assign(label=val["case_id"].map(labels)).groupby(["fold", "label"]).size().unstack()
    assert (val_counts["A"] == 2).all() and (val_counts["B"] == 2).all()  # round(0.25*9)=2, round(0.25*6)=2


def test_same_seed_same_splits_other_seed_differs():
    a = make_splits(_sheet(), k=5, seed=1)
    pd.testing.assert_frame_equal(a, make_splits(_sheet(), k=5, seed=1))
    assert not a["split"].equals(make_splits(_sheet(), k=5, seed=2)["split"])


def test_unlabelled_sheet_gives_unstratified_folds_and_too_few_patients_fails():
    sheet = _sheet().drop(columns=["label"])
    folds = make_splits(sheet, k=5, label_column="label")
    assert (folds[folds["split"] == "test"].groupby("fold")["case_id"].nunique() == 4).all()
    with pytest.raises(SplitError, match="k=5"):
        make_splits(_sheet(n_patients=3), k=5)


def _patients_per_fold(folds: pd.DataFrame, table: pd.DataFrame, column: str) -> np.ndarray:
    test = (
        folds[folds["split"] == "test"]
        .drop_duplicates("case_id")
        .merge(table.drop_duplicates("case_id")[["case_id", column]], on="case_id")
    )
    return test.groupby("fold")[column].sum().to_numpy()


def test_multilabel_folds_balance_every_gene_by_iterative_stratification():
    rng = np.random.default_rng(0)
    n = 40
    genes = {"target_TP53": rng.random(n) < 0.5, "target_KRAS": rng.random(n) < 0.2, "target_ALK": np.arange(n) < 5}
    table = pd.DataFrame({"slide_id": [f"s{i}" for i in range(n)], "case_id": [f"p{i}" for i in range(n)]})
    table = table.assign(**{g: v.astype(int) for g, v in genes.items()})
    folds = make_splits(table, k=5, val_fraction=0.25, seed=0)
    for gene, values in genes.items():
        per_fold = _patients_per_fold(folds, table, gene)
        assert per_fold.sum() == values.sum() and per_fold.max() - per_fold.min() <= 1, (gene, per_fold)
    assert (folds.groupby(["fold", "case_id"])["split"].nunique() == 1).all()
    val = folds[folds["split"] == "val"]
    assert val.groupby("fold")["case_id"].nunique().between(6, 10).all()  # ~ 32 / 4 of the non-test patients
    # the rare gene (5 carriers) reaches 5 different test folds, not by luck
    assert (_patients_per_fold(folds, table, "target_ALK") == 1).all()


def test_survival_folds_are_stratified_by_event_and_time_quantile():
    n = 40
    time = np.arange(n, dtype=float) * 10
    event = (np.arange(n) % 4 == 0).astype(int)  # 10 events, spread over time
    table = pd.DataFrame(
        {"slide_id": [f"s{i}" for i in range(n)], "case_id": [f"p{i}" for i in range(n)], "time": time, "event": event}
    )
    folds = make_splits(table, k=5, val_fraction=0.2, seed=0)
    assert set(_patients_per_fold(folds, table, "event")) == {2}
    table["late"] = (time >= np.median(time)).astype(int)
    assert set(_patients_per_fold(folds, table, "late")) == {4}  # 20 late patients, 4 per test fold
