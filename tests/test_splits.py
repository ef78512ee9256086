"""make_splits: patient grouping, every patient tested once, stratification, determinism."""

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
