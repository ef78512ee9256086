"""VL evaluation (slidesnake.evaluate.vl) runs on the trained models' metrics code: per-patient means,
fold metrics identical to evaluate_predictions, the sweep's spread over prompt sets, tile-level scores."""

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import balanced_accuracy_score, f1_score, roc_auc_score

from slidesnake.evaluate.metrics import evaluate_predictions
from slidesnake.evaluate.vl import comparison_table, fold_metrics, patient_metrics, sweep_table, tile_zeroshot
from slidesnake.models.vl.zeroshot import FULL_SET, TextBank
from slidesnake.tasks import Task


def _predictions(probs_b, targets, folds, slides_per_patient=2, offset=0.1):
    """Each patient's slides at prob_B = p - offset and p + offset (mean p)."""
    rows = []
    for i, (p, t, fold) in enumerate(zip(probs_b, targets, folds)):
        for j in range(slides_per_patient):
            q = p + (offset if j % 2 else -offset)
            rows.append({"slide_id": f"p{i}-S{j}", "case_id": f"p{i}", "fold": fold, "split": "test", "target": t,
                         "prob_A": 1 - q, "prob_B": q})  # fmt: skip
    return pd.DataFrame(rows)


def test_patient_metrics_score_patient_means_pooled_over_folds():
    # Fold 0 ranks its patients perfectly, fold 1 too, but fold 1's scores are all higher: pooled over
    # folds (one zero-shot scale) the AUC is below 1, within folds it would be 1.
    probs, targets, folds = [0.2, 0.4, 0.6, 0.8, 0.45], [0, 1, 0, 1, 0], [0, 0, 1, 1, 1]
    frame = _predictions(probs, targets, folds)
    row = patient_metrics(frame, n_bootstrap=50, seed=0)
    pred = (np.array(probs) > 0.5).astype(int)
    assert row["n_patients"] == 5 and row["n_slides"] == 10
    assert row["auc"] == pytest.approx(roc_auc_score(targets, probs)) and row["auc"] < 1
    assert row["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(targets, pred))
    assert row["weighted_f1"] == pytest.approx(f1_score(targets, pred, average="weighted"))
    assert row["auc_ci_low"] <= row["auc"] <= row["auc_ci_high"]
    assert not any(key.endswith("_ci_low") for key in patient_metrics(frame, n_bootstrap=0))


def test_supervised_comparison_rows_count_auc_pairs_within_folds_as_metrics_csv(tmp_path):
    # The same predictions as one zero-shot table (pooled: AUC < 1) and as a supervised model's fold files
    # (each fold ranks perfectly: its five fold models' scales must not be compared, so AUC = 1, equal to
    # the pooled row of the model's own metrics.csv).
    probs, targets, folds = [0.2, 0.4, 0.6, 0.8, 0.45], [0, 1, 0, 1, 0], [0, 0, 1, 1, 1]
    frame = _predictions(probs, targets, folds)
    frame.to_parquet(tmp_path / "zeroshot.parquet")
    files = []
    for fold, part in frame.groupby("fold"):
        files.append(str(tmp_path / f"fold{fold}.parquet"))
        part.to_parquet(files[-1])
    table = comparison_table(
        [("subtype", "zeroshot-demo", "enc", tmp_path / "zeroshot.parquet", None)],
        [("subtype", "abmil", "enc", files)],
        n_bootstrap=20,
    ).set_index("model")
    own = evaluate_predictions(Task("subtype", "classification", classes=("A", "B")), files, n_bootstrap=0)
    assert table.at["zeroshot-demo", "auc"] == pytest.approx(roc_auc_score(targets, probs))
    assert table.at["zeroshot-demo", "auc"] < 1
    assert table.at["abmil", "auc"] == pytest.approx(own.set_index("fold").at["pooled", "auc"])
    assert table.at["abmil", "auc"] == 1.0
    assert table.at["abmil", "n_patients"] == 5


def test_common_patients_are_the_aligned_encoders_not_shrunk_by_a_few_shot_model(tmp_path):
    # zero-shot on 20 patients, the aligned encoder on 8 of them, a few-shot model tested on 4 others (and one
    # of the 8): the *_common columns score every row on the aligned encoder's 8 patients
    rng = np.random.default_rng(2)
    targets = list(np.tile([0, 1], 10))
    frame = _predictions(list(0.5 + 0.3 * (np.array(targets) - 0.5) + rng.normal(0, 0.05, 20)), targets, [0] * 20)
    frame.to_parquet(tmp_path / "zs.parquet")
    aligned = [f"p{i}" for i in range(8)]
    frame[frame["case_id"].isin(aligned)].to_parquet(tmp_path / "aligned.parquet")
    few = frame[frame["case_id"].isin(["p7", "p12", "p13", "p14", "p15"])]
    few.to_parquet(tmp_path / "few0.parquet")
    table = comparison_table(
        [("subtype", "zeroshot-demo", "enc", tmp_path / "zs.parquet", None),
         ("subtype", "zeroshot-demo", "enc-aligned", tmp_path / "aligned.parquet", None)],
        [("subtype", "hivemil", "enc", [str(tmp_path / "few0.parquet")])],
        n_bootstrap=0,
    ).set_index(["encoder", "model"])  # fmt: skip
    assert table.loc[("enc", "zeroshot-demo"), "n_patients_common"] == 8
    assert table.loc[("enc-aligned", "zeroshot-demo"), "n_patients_common"] == 8
    assert table.loc[("enc", "hivemil"), "n_patients_common"] == 1  # only p7 of its test patients is common


def test_fold_metrics_are_the_trained_models_table_of_the_same_predictions(tmp_path):
    rng = np.random.default_rng(0)
    targets = list(np.tile([0, 1], 10))
    frame = _predictions(list(rng.uniform(0.2, 0.8, 20)), targets, [i % 3 for i in range(20)])
    task = Task("subtype", "classification", classes=("A", "B"))
    files = []
    for fold, part in frame.groupby("fold"):
        files.append(str(tmp_path / f"fold{fold}.parquet"))
        part.to_parquet(files[-1])
    expected = evaluate_predictions(task, files, n_bootstrap=100, seed=4)
    pd.testing.assert_frame_equal(fold_metrics(task, frame, 100, 4), expected)
    assert list(expected["fold"]) == ["0", "1", "2", "mean", "std", "pooled"]


def test_sweep_reports_the_full_ensemble_and_the_median_over_sampled_prompt_sets():
    rng = np.random.default_rng(1)
    labels = pd.DataFrame({"slide_id": [f"s{i}" for i in range(12)], "case_id": [f"p{i // 2}" for i in range(12)]})
    labels["target"] = [(i // 2) % 2 for i in range(12)]
    rows = []
    for k in (1, 5):
        for prompt_set in (FULL_SET, 0, 1, 2):
            for slide, target in zip(labels["slide_id"], labels["target"]):
                p = float(np.clip(0.5 + (target - 0.5) * 0.4 * (prompt_set + 2) / 4 + rng.normal(0, 0.2), 0, 1))
                rows.append({"slide_id": slide, "prompt_set": prompt_set, "k": k, "prob_A": 1 - p, "prob_B": p})
    scores = pd.DataFrame(rows)
    table = sweep_table(scores, labels).set_index("k")
    for k in (1, 5):
        aucs = {}
        for prompt_set, part in scores[scores["k"] == k].groupby("prompt_set"):
            patients = part.merge(labels, on="slide_id").groupby("case_id").agg({"prob_B": "mean", "target": "first"})
            aucs[prompt_set] = roc_auc_score(patients["target"], patients["prob_B"])
        assert table.loc[k, "auc"] == pytest.approx(aucs[FULL_SET])
        assert table.loc[k, "auc_sets_median"] == pytest.approx(np.median([aucs[s] for s in (0, 1, 2)]))
        assert table.loc[k, "n_prompt_sets"] == 3


def test_tile_zeroshot_scores_only_prompt_classes_per_magnification():
    emb = np.eye(4, dtype=np.float32)[:2]  # class weights: the first two axes
    bank = TextBank(emb, np.array([0, 1]), np.array([0, 0]), np.array([0, 0]), ["a", "b"], 10.0, "t")
    kinds = np.array(["a", "b", "a", "b", "fat", "a"])
    mags = np.array(["5x", "5x", "20x", "20x", "20x", "20x"])
    features = np.array([[1, 0, 0, 0], [0, 1, 0, 0], [1, 0.2, 0, 0], [0.9, 1, 0, 0], [0, 0, 1, 0], [0.2, 1, 0, 0]])
    table = tile_zeroshot(features, kinds, mags, bank, n_bootstrap=20).set_index("magnification")
    assert table.loc["5x", "n_tiles"] == 2 and table.loc["20x", "n_tiles"] == 3 and table.loc["all", "n_tiles"] == 5
    assert table.loc["5x", "balanced_accuracy"] == 1.0
    # 20x: a->a, b->b, a->b: recall a 1/2, b 1/1
    assert table.loc["20x", "balanced_accuracy"] == pytest.approx(0.75)
    assert table.loc["all", "weighted_f1"] == pytest.approx(
        f1_score([0, 1, 0, 1, 0], [0, 1, 0, 1, 1], average="weighted")
    )
