"""Few-shot splits: N slides per class, patient-level, shared val/test per repeat, nested training sets."""

import pandas as pd
import pytest

from slidesnake.cli import main
from slidesnake.train.splits import SplitError, make_fewshot_splits


def _sheet(n_a=30, n_b=20, slides=(1, 2)):
    rows = []
    for p in range(n_a + n_b):
        for s in range(slides[p % len(slides)]):
            rows.append({"slide_id": f"S{p}_{s}", "case_id": f"P{p}", "label": "A" if p < n_a else "B"})
    return pd.DataFrame(rows)


def _labels(sheet):
    return sheet.set_index("slide_id")["label"]


def test_counts_disjoint_patients_and_balanced_held_out_sets():
    sheet = _sheet()
    tables = make_fewshot_splits(sheet, [1, 2, 4, 8], repeats=5, seed=0)
    labels = _labels(sheet)
    for n, table in tables.items():
        assert sorted(table["fold"].unique()) == [0, 1, 2, 3, 4]
        for _, fold in table.groupby("fold"):
            assert fold["slide_id"].is_unique
            assert (fold.groupby("case_id")["split"].nunique() == 1).all()  # a patient sits in one split
            train = fold[fold["split"] == "train"]
            assert train["slide_id"].map(labels).value_counts().to_dict() == {"A": n, "B": n}
            for split in ("val", "test"):  # floor(0.3 * 20 smallest-class patients) = 6 patients per class
                part = fold[fold["split"] == split].drop_duplicates("case_id")
                assert part["slide_id"].map(labels).value_counts().to_dict() == {"A": 6, "B": 6}


def test_same_val_and_test_for_every_n_of_a_repeat_and_nested_training():
    tables = make_fewshot_splits(_sheet(n_a=40, n_b=30), [1, 2, 4, 8, 16], repeats=3, seed=4)
    for repeat in range(3):
        held = {
            n: t[(t["fold"] == repeat) & (t["split"] != "train")].sort_values("slide_id").reset_index(drop=True)
            for n, t in tables.items()
        }
        for n in (2, 4, 8, 16):
            pd.testing.assert_frame_equal(held[1], held[n])
        trains = {n: set(t[(t["fold"] == repeat) & (t["split"] == "train")]["slide_id"]) for n, t in tables.items()}
        assert trains[1] < trains[2] < trains[4] < trains[8] < trains[16]
    tests = [set(tables[4][(tables[4]["fold"] == r) & (tables[4]["split"] == "test")]["case_id"]) for r in range(3)]
    assert tests[0] != tests[1]  # repeats are different draws


def test_fixed_seeds_reproduce_and_other_seed_differs():
    a = make_fewshot_splits(_sheet(), 4, seed=1)[4]
    pd.testing.assert_frame_equal(a, make_fewshot_splits(_sheet(), 4, seed=1)[4])
    assert not a.equals(make_fewshot_splits(_sheet(), 4, seed=2)[4])


def test_too_few_training_slides_names_the_class_and_the_fix():
    with pytest.raises(SplitError, match=r"class 'B'.*16-shot needs 16"):
        make_fewshot_splits(_sheet(n_a=40, n_b=12, slides=(1,)), 16, balanced=False)


def test_cli_writes_one_file_per_n(tmp_path):
    sheet = _sheet()
    sheet_path = tmp_path / "slides.tsv"
    sheet.assign(path="x", md5="", source="demo", scan="40x").to_csv(sheet_path, sep="\t", index=False)
    config = tmp_path / "config.yaml"
    config.write_text("cohort: c\ntasks:\n  subtype:\n    kind: classification\n    column: label\n")
    out = tmp_path / "fewshot{N}.csv"
    code = main(["splits", "--config", str(config), "--task", "subtype", "--sheet", str(sheet_path),
                 "--few-shot", "2", "4", "--repeats", "2", "--out", str(out)])  # fmt: skip
    assert code == 0
    for n in (2, 4):
        table = pd.read_csv(tmp_path / f"fewshot{n}.csv")
        assert list(table.columns) == ["slide_id", "case_id", "fold", "split"]
        assert (table[table["split"] == "train"].groupby("fold").size() == 2 * n).all()
