"""The few-shot curve: zero-shot scored on each repeat's test patients, curve points from metrics tables."""

import numpy as np
import pandas as pd
import pytest

from slidesnake.errors import InputError
from slidesnake.evaluate.fewshot import curve_figure, curve_table, repeat_test_tables, zeroshot_repeat_metrics
from slidesnake.evaluate.metrics import evaluate_tables
from slidesnake.tasks import Task
from slidesnake.train.splits import make_fewshot_splits

TASK = Task("subtype", "classification", classes=["A", "B"])


def _sheet(n_per_class=10):
    rows = [
        {"slide_id": f"S{p}_{s}", "case_id": f"P{p}", "label": "A" if p < n_per_class else "B"}
        for p in range(2 * n_per_class)
        for s in range(2)
    ]
    return pd.DataFrame(rows)


def _zeroshot(sheet, rng):
    """Every slide scored once (as the zeroshot rule writes them), class B scored higher for B patients."""
    y = (sheet["label"] == "B").to_numpy(int)
    p_b = np.clip(0.5 + 0.3 * (y - 0.5) + rng.normal(0, 0.25, len(y)), 0.01, 0.99)
    return sheet.assign(target=y, prob_A=1 - p_b, prob_B=p_b, fold=0, split="test")


def test_zeroshot_is_scored_on_each_repeats_test_patients_only():
    sheet = _sheet()
    splits = make_fewshot_splits(sheet, [1, 2], repeats=3, seed=0)
    predictions = _zeroshot(sheet, np.random.default_rng(0))
    tables = repeat_test_tables(predictions, splits[1])
    assert [name for name, _ in tables] == ["repeat 0", "repeat 1", "repeat 2"]
    for repeat, (_, table) in enumerate(tables):
        test = splits[1][(splits[1]["fold"] == repeat) & (splits[1]["split"] == "test")]
        assert sorted(table["slide_id"]) == sorted(test["slide_id"])
        assert (table["fold"] == repeat).all() and (table["split"] == "test").all()
    # the same test patients for every N of a repeat, so any N's splits score zero-shot alike
    a = zeroshot_repeat_metrics(TASK, predictions, splits[1], n_bootstrap=0)
    b = zeroshot_repeat_metrics(TASK, predictions, splits[2], n_bootstrap=0)
    pd.testing.assert_frame_equal(a, b)
    # per patient: 3 test patients per class (floor(0.3 * 10)), one row each though they have two slides
    assert (a.loc[a["fold"].isin(["0", "1", "2"]), "n"] == 6).all()


def test_curve_points_are_mean_and_std_over_repeats(tmp_path):
    rng = np.random.default_rng(1)
    files = []
    for model, shots in (("abmil", 1), ("abmil", 4), ("hivemil", 1), ("hivemil", 4)):
        runs = []
        for repeat in range(5):
            y = np.array([0, 0, 0, 1, 1, 1])
            p = np.clip(0.5 + (0.1 if shots == 1 else 0.3) * (y - 0.5) + rng.normal(0, 0.2, 6), 0, 1)
            runs.append((f"r{repeat}", pd.DataFrame({
                "slide_id": [f"s{i}" for i in range(6)], "case_id": [f"c{i}" for i in range(6)],
                "fold": repeat, "split": "test", "target": y, "prob_A": 1 - p, "prob_B": p,
            })))  # fmt: skip
        path = tmp_path / f"{model}{shots}.csv"
        evaluate_tables(TASK, runs, n_bootstrap=0).to_csv(path, index=False)
        files.append((model, shots, path))
    zs = ("zeroshot-demo", pd.read_csv(files[0][2]))
    table = curve_table(files, [zs])
    assert list(table["model"]) == ["abmil", "abmil", "hivemil", "hivemil", "zeroshot-demo"]
    assert list(table["shots"]) == [1, 4, 1, 4, 0]
    metrics = pd.read_csv(files[1][2]).set_index("fold")
    row = table[(table["model"] == "abmil") & (table["shots"] == 4)].iloc[0]
    assert row["repeats"] == 5 and row["n_test"] == 6
    assert row["auc_mean"] == pytest.approx(metrics.loc["mean", "auc"])
    assert row["auc_std"] == pytest.approx(metrics.loc["std", "auc"])
    png = tmp_path / "curve.png"
    curve_figure(table, png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_curve_without_points_says_which_key():
    with pytest.raises(InputError, match="training.fewshot.curve"):
        curve_table([], [])
