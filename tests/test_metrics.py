"""Metrics against hand-computed values; bootstrap CI; evaluate_predictions on known prediction files."""

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, roc_auc_score

from slidesnake.errors import InputError
from slidesnake.evaluate.metrics import (
    bootstrap_ci,
    classification_metrics,
    evaluate_predictions,
    grouped_auc,
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
    # pooled out-of-fold predictions: 6 of 8 right; AUC over the 4 + 4 positive/negative pairs within a
    # fold, 3 + 4 ordered (pooling across folds would count 16 pairs, 15 ordered)
    assert table.loc["pooled", "accuracy"] == pytest.approx(0.75) and table.loc["pooled", "n"] == 8
    assert table.loc["pooled", "auc"] == pytest.approx(7 / 8)
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
        frame = pd.DataFrame({"slide_id": [f"s{fold}{i}" for i in range(3)], "case_id": [f"p{fold}{i}" for i in range(3)],
                              "fold": fold, "split": "test",
                              "time": [1.0 + fold, 3.0 + fold, 5.0 + fold], "event": 1,
                              "risk": offset + np.array([3.0, 2.0, 1.0])})  # fmt: skip
        frame.to_parquet(tmp_path / f"f{fold}.parquet")
        files.append(str(tmp_path / f"f{fold}.parquet"))
    table = evaluate_predictions(task, files, n_bootstrap=100).set_index("fold")
    assert table.loc["0", "c_index"] == table.loc["1", "c_index"] == 1.0
    assert table.loc["pooled", "c_index"] == 1.0  # naive pooling would give 9/15
    assert table.loc["pooled", "c_index_ci_low"] == 1.0
    assert table.loc["pooled", "n"] == 6


def test_macro_f1_ignores_classes_absent_from_truth_and_prediction():
    y = np.array([0, 0, 1, 1])
    prob = np.array([[0.9, 0.1, 0.0], [0.4, 0.6, 0.0], [0.2, 0.8, 0.0], [0.3, 0.7, 0.0]])  # class 2: never
    m = classification_metrics(y, prob)
    assert m["macro_f1"] == pytest.approx(f1_score(y, prob.argmax(1), labels=[0, 1], average="macro"))
    assert m["macro_f1"] == pytest.approx((2 / 3 + 0.8) / 2)  # a 0 for class 2 would give 0.489


def test_pooled_multiclass_auc_counts_pairs_within_folds_only():
    rng = np.random.default_rng(0)
    y = np.tile([0, 1, 2], 4)
    folds = np.repeat([0, 1], 6)
    prob = np.eye(3)[y] * 0.5 + rng.uniform(0, 0.1, (12, 3))  # each fold ranks perfectly ...
    prob[folds == 1] += np.array([0.0, 0.0, 0.7])  # ... but fold 1's model is shifted towards class 2
    assert classification_metrics(y, prob, folds)["auc"] == pytest.approx(1.0)
    assert classification_metrics(y, prob)["auc"] < 0.95  # mixing the folds' scales
    # binary: per-fold AUCs 0.5 (4 pairs) and 1.0 (2 pairs) -> (0.5*4 + 1*2) / 6
    yb, pb, gb = (
        np.array([0, 0, 1, 1, 0, 1, 1]),
        np.array([0.1, 0.9, 0.2, 0.8, 5.0, 6.0, 7.0]),
        np.array([0] * 4 + [1] * 3),
    )
    assert grouped_auc(yb, np.stack([1 - pb, pb], 1), gb) == pytest.approx(4 / 6)


def _two_slides_per_patient(path, probs, targets, fold=0, second_offset=0.0):
    n = len(targets)
    frame = pd.DataFrame(
        {
            "slide_id": [f"p{i}-S{j}" for j in (1, 2) for i in range(n)],
            "case_id": [f"p{i}" for _ in (1, 2) for i in range(n)],
            "fold": fold,
            "split": "test",
            "target": list(targets) * 2,
            "prob_A": [1 - p for p in probs] + [1 - p - second_offset for p in probs],
            "prob_B": list(probs) + [p + second_offset for p in probs],
        }
    )
    frame.to_parquet(path)
    return str(path)


def test_metrics_are_per_patient_mean_of_slide_scores_and_n_counts_patients(tmp_path):
    task = Task(name="subtype", kind="classification", column="label")
    # patient means of prob_B: 0.3, 0.5 (0.3 / 0.7) -> argmax A (tie breaks to A), 0.6, 0.8
    path = _two_slides_per_patient(tmp_path / "f.parquet", [0.3, 0.3, 0.6, 0.8], [0, 1, 1, 1])
    frame = pd.read_parquet(path)
    frame.loc[frame["slide_id"] == "p1-S2", ["prob_A", "prob_B"]] = [0.3, 0.7]
    frame.to_parquet(path)
    patients = evaluate_predictions(task, [path], n_bootstrap=50).set_index("fold")
    slides = evaluate_predictions(task, [path], n_bootstrap=50, unit="slide").set_index("fold")
    assert patients.loc["0", "n"] == 4 and slides.loc["0", "n"] == 8
    assert patients.loc["0", "accuracy"] == pytest.approx(3 / 4)  # p1's mean 0.5 is not > 0.5
    assert patients.loc["0", "auc"] == pytest.approx(roc_auc_score([0, 1, 1, 1], [0.3, 0.5, 0.6, 0.8]))
    assert slides.loc["0", "accuracy"] == pytest.approx(7 / 8)
    with pytest.raises(InputError, match="evaluation.unit"):
        evaluate_predictions(task, [path], unit="case")


def test_patient_bootstrap_is_not_narrowed_by_a_second_slide(tmp_path):
    task = Task(name="subtype", kind="classification", column="label")
    rng = np.random.default_rng(1)
    targets = np.repeat([0, 1], 15)
    probs = np.clip(0.5 + (targets - 0.5) * 0.3 + rng.normal(0, 0.25, 30), 0.01, 0.99)
    one = _predictions(tmp_path / "one.parquet", 0, list(probs), list(targets))
    two = _two_slides_per_patient(tmp_path / "two.parquet", probs, targets)
    width = {}
    for name, path, unit in (("one", one, "patient"), ("two", two, "patient"), ("two_slides", two, "slide")):
        row = evaluate_predictions(task, [path], n_bootstrap=400, seed=3, unit=unit).set_index("fold").loc["0"]
        width[name] = row["auc_ci_high"] - row["auc_ci_low"]
    assert width["two"] == pytest.approx(width["one"])  # the same 30 patients
    assert width["two_slides"] < 0.85 * width["one"]  # duplicated slides fake a narrower interval
