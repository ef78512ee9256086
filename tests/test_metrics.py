"""Metrics against hand-computed values; bootstrap CI; evaluate_predictions on known prediction files."""

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score

from slidesnake.evaluate.metrics import (
    bootstrap_ci,
    classification_metrics,
    evaluate_predictions,
    multilabel_metrics,
    survival_metrics,
)
from slidesnake.tasks import Task


def test_binary_metrics_hand_computed():
    m = classification_metrics(np.array([0, 0, 1, 1]), np.array([0.1, 0.6, 0.4, 0.9]))
    # predictions 0,1,0,1 -> one error per class; AUC: 3 of 4 (pos, neg) pairs ranked right
    assert m == pytest.approx({"accuracy": 0.5, "balanced_accuracy": 0.5, "macro_f1": 0.5, "auc": 0.75})


def test_imbalanced_binary_hand_computed():
    y = np.array([0, 0, 0, 1])
    m = classification_metrics(y, np.array([0.2, 0.3, 0.7, 0.8]))
    # predicted 0,0,1,1: recall 2/3 and 1 -> balanced 5/6; F1 class0 = 4/5, class1 = 2/3
    assert m["accuracy"] == pytest.approx(0.75)
    assert m["balanced_accuracy"] == pytest.approx(5 / 6)
    assert m["macro_f1"] == pytest.approx((0.8 + 2 / 3) / 2)
    assert m["auc"] == pytest.approx(1.0)


def test_multiclass_auc_is_macro_ovr_and_counts_match_sklearn():
    y = np.array([0, 1, 2, 2])
    prob = np.array([[0.6, 0.3, 0.1], [0.5, 0.4, 0.1], [0.1, 0.2, 0.7], [0.2, 0.5, 0.3]])
    m = classification_metrics(y, prob)
    # OvR AUCs: class0 1.0; class1: pos 0.4 vs neg 0.3,0.2,0.5 -> 2/3; class2: 0.7,0.3 vs 0.1,0.1 -> 1.0
    assert m["auc"] == pytest.approx((1 + 2 / 3 + 1) / 3)
    pred = prob.argmax(1)
    assert m["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred))
    assert m["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro"))


def test_single_class_auc_is_nan():
    assert np.isnan(classification_metrics(np.array([1, 1]), np.array([0.2, 0.9]))["auc"])


def test_multilabel_and_survival_hand_computed():
    y = np.array([[1, 0], [0, 1], [1, 1], [0, 0]])
    prob = np.array([[0.9, 0.2], [0.3, 0.6], [0.4, 0.4], [0.1, 0.7]])
    m = multilabel_metrics(y, prob, ["TP53", "EGFR"])
    assert m["auc_TP53"] == pytest.approx(1.0)
    assert m["auc_EGFR"] == pytest.approx(0.5)  # pos 0.6,0.4 vs neg 0.2,0.7 -> 2 of 4 pairs
    assert m["mean_auc"] == pytest.approx(0.75)
    assert m["exact_match"] == pytest.approx(0.5)  # rows 1 and 2 fully right
    times = np.array([[1.0, 1], [2.0, 1], [3.0, 0]])
    assert survival_metrics(times, np.array([3.0, 2.0, 1.0]))["c_index"] == pytest.approx(1.0)
    assert survival_metrics(times, np.array([1.0, 2.0, 3.0]))["c_index"] == pytest.approx(0.0)


def test_bootstrap_ci_width_matches_binomial_and_is_seeded():
    y = np.ones(400, dtype=int)
    prob = np.zeros(400)
    prob[:280] = 1.0  # accuracy 0.7
    acc = lambda t, p: float(np.mean((p >= 0.5) == t))  # noqa: E731
    low, high = bootstrap_ci(y, prob, acc, n=1000, seed=0)
    half = 1.96 * np.sqrt(0.21 / 400)  # 0.045
    assert low == pytest.approx(0.7 - half, abs=0.01) and high == pytest.approx(0.7 + half, abs=0.01)
    assert (low, high) == bootstrap_ci(y, prob, acc, n=1000, seed=0)


def _predictions(path, fold, test_probs, test_targets):
    n = len(test_targets)
    frame = pd.DataFrame(
        {
            "slide_id": [f"t{fold}_{i}" for i in range(n)] + ["v0", "v1"],
            "case_id": [f"c{fold}_{i}" for i in range(n)] + ["cv0", "cv1"],
            "fold": fold,
            "split": ["test"] * n + ["val", "val"],
            "target": list(test_targets) + [0, 1],
            "prob_A": [1 - p for p in test_probs] + [0.0, 1.0],  # val rows are deliberately wrong
            "prob_B": list(test_probs) + [1.0, 0.0],
        }
    )
    frame.to_parquet(path)
    return str(path)


def test_evaluate_predictions_per_fold_mean_std_test_only(tmp_path):
    task = Task(name="subtype", kind="classification", column="label")
    files = [
        _predictions(tmp_path / "f0.parquet", 0, [0.1, 0.6, 0.4, 0.9], [0, 0, 1, 1]),  # acc 0.5, auc 0.75
        _predictions(tmp_path / "f1.parquet", 1, [0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1]),  # acc 1, auc 1
    ]
    table = evaluate_predictions(task, files, n_bootstrap=200).set_index("fold")
    assert list(table.index) == ["0", "1", "mean", "std", "pooled"]
    assert table.loc["0", "accuracy"] == pytest.approx(0.5) and table.loc["1", "auc"] == pytest.approx(1.0)
    assert table.loc["mean", "accuracy"] == pytest.approx(0.75)
    assert table.loc["std", "accuracy"] == pytest.approx(np.std([0.5, 1.0], ddof=1))
    assert table.loc["mean", "auc"] == pytest.approx(0.875)
    assert table.loc["1", "auc_ci_low"] == pytest.approx(1.0) and table.loc["0", "n"] == 4
    assert table.loc["0", "accuracy_ci_low"] <= 0.5 <= table.loc["0", "accuracy_ci_high"]
    # pooled out-of-fold predictions: 6 of 8 right; AUC 15 of 16 positive/negative pairs ordered
    assert table.loc["pooled", "accuracy"] == pytest.approx(0.75) and table.loc["pooled", "n"] == 8
    assert table.loc["pooled", "auc"] == pytest.approx(15 / 16)
    assert np.isnan(table.loc["mean", "auc_ci_low"])


def test_bootstrap_keeps_both_classes_so_a_perfect_classifier_has_a_degenerate_ci(tmp_path):
    task = Task(name="subtype", kind="classification", column="label")
    files = [_predictions(tmp_path / "f0.parquet", 0, [0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1])]
    table = evaluate_predictions(task, files, n_bootstrap=300).set_index("fold")
    for metric in ("accuracy", "balanced_accuracy", "macro_f1", "auc"):
        assert table.loc["0", f"{metric}_ci_low"] == pytest.approx(1.0), metric


def test_pooled_survival_c_index_compares_patients_within_folds(tmp_path):
    task = Task(name="os", kind="survival", time="os_days", event="os_event")
    files = []
    for fold, offset in ((0, 0.0), (1, 10.0)):  # fold 1's model outputs risks 10 higher
        frame = pd.DataFrame({"slide_id": [f"s{fold}{i}" for i in range(3)], "fold": fold, "split": "test",
                              "time": [1.0 + fold, 3.0 + fold, 5.0 + fold], "event": 1,
                              "risk": offset + np.array([3.0, 2.0, 1.0])})  # fmt: skip
        frame.to_parquet(tmp_path / f"f{fold}.parquet")
        files.append(str(tmp_path / f"f{fold}.parquet"))
    table = evaluate_predictions(task, files, n_bootstrap=100).set_index("fold")
    assert table.loc["0", "c_index"] == table.loc["1", "c_index"] == 1.0
    assert table.loc["pooled", "c_index"] == 1.0  # naive pooling would give 9/15
    assert table.loc["pooled", "c_index_ci_low"] == 1.0
    assert table.loc["pooled", "n"] == 6
