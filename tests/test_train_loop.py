"""train_fold end to end on a synthetic cohort: learning, val-only selection, outputs, skipped empty slides."""

import numpy as np
import pandas as pd
import pytest
import torch
from _mil_fixtures import write_cohort

from slidesnake.evaluate.metrics import evaluate_predictions
from slidesnake.tasks import Task, task_from_config, task_labels
from slidesnake.train.loop import TrainParams, train_fold
from slidesnake.train.splits import make_splits

torch.set_num_threads(1)  # tiny bags: thread start-up costs more than it saves on a shared CPU
FAST = dict(epochs=15, patience=6, lr=1e-3, model_kwargs={"hidden": 64, "attn_dim": 32})


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("cohort")
    sheet, feats, _ = write_cohort(root, n_patients=24, n_key=8, strength=4.0, empty_slides=1)
    task = task_from_config("subtype", {"kind": "classification", "column": "label"})
    labels = task_labels(task, sheet)
    folds = make_splits(sheet, k=3, val_fraction=0.2, seed=0)
    return root, task, feats, labels, folds


def test_abmil_learns_key_instance_task_and_writes_contract_files(cohort):
    root, task, feats, labels, folds = cohort
    files = []
    for fold in range(3):
        out = root / f"abmil/fold{fold}"
        train_fold(task, "abmil", feats, labels, folds, fold, TrainParams(**FAST), str(out))
        files.append(str(out / "predictions.parquet"))
    table = evaluate_predictions(task, files, n_bootstrap=50).set_index("fold")
    assert table.loc["mean", "auc"] >= 0.9
    pred = pd.read_parquet(files[0])
    assert set(pred["split"]) == {"val", "test"}
    assert "EMPTY0" not in set(pred["slide_id"])  # zero-patch slide skipped, not crashed
    assert list(pred.columns[:4]) == ["slide_id", "case_id", "fold", "split"]
    assert np.allclose(pred[["prob_neg", "prob_pos"]].sum(axis=1), 1.0)
    expected = folds[(folds["fold"] == 0) & folds["split"].isin(["val", "test"]) & (folds["slide_id"] != "EMPTY0")]
    assert sorted(pred["slide_id"]) == sorted(expected["slide_id"])
    history = pd.read_csv(root / "abmil/fold0/history.csv")
    assert list(history.columns) == ["epoch", "train_loss", "val_loss", "val_auc"]
    checkpoint = torch.load(root / "abmil/fold0/model.pt", weights_only=False)
    assert checkpoint["best_epoch"] == int(history["val_loss"].idxmin())
    assert checkpoint["classes"] == ["neg", "pos"] and checkpoint["in_dim"] == 32


def test_test_labels_never_influence_training(cohort):
    root, task, feats, labels, folds = cohort
    test_ids = set(folds[(folds["fold"] == 1) & (folds["split"] == "test")]["slide_id"])
    flipped = labels.copy()
    flip = flipped["slide_id"].isin(test_ids)
    flipped.loc[flip, "target"] = 1 - flipped.loc[flip, "target"]
    params = TrainParams(**{**FAST, "epochs": 3})
    train_fold(task, "abmil", feats, labels, folds, 1, params, str(root / "a"))
    train_fold(task, "abmil", feats, flipped, folds, 1, params, str(root / "b"))
    pd.testing.assert_frame_equal(pd.read_csv(root / "a/history.csv"), pd.read_csv(root / "b/history.csv"))
    a = pd.read_parquet(root / "a/predictions.parquet")
    b = pd.read_parquet(root / "b/predictions.parquet")
    assert np.allclose(a["prob_pos"], b["prob_pos"])  # same model, whatever the test labels


def test_multilabel_and_survival_tasks_train_and_predict(cohort):
    root, _, feats, labels, folds = cohort
    positive = (labels["label"] == "pos").to_numpy()
    rng = np.random.default_rng(0)
    extra = labels.assign(
        target_TP53=positive.astype(int),
        target_EGFR=rng.integers(0, 2, len(labels)),
        time=np.where(positive, 100.0, 1000.0) + rng.uniform(0, 50, len(labels)),
        event=1,
    )
    genes = Task(name="mut", kind="multilabel", genes=("TP53", "EGFR"))
    train_fold(genes, "abmil", feats, extra, folds, 0, TrainParams(**FAST), str(root / "mut"))
    pred = pd.read_parquet(root / "mut/predictions.parquet")
    test = pred[pred["split"] == "test"]
    assert {"prob_TP53", "prob_EGFR", "target_TP53"} <= set(pred.columns)
    assert test.loc[test["target_TP53"] == 1, "prob_TP53"].min() > test.loc[test["target_TP53"] == 0, "prob_TP53"].max()
    survival = Task(name="os", kind="survival", source="clinical")
    train_fold(survival, "abmil", feats, extra, folds, 0, TrainParams(**FAST), str(root / "os"))
    table = evaluate_predictions(survival, [str(root / "os/predictions.parquet")], n_bootstrap=20)
    pred = pd.read_parquet(root / "os/predictions.parquet")
    test = pred[pred["split"] == "test"]
    # positives die early: their predicted risk must sit above the negatives' (within-group order is noise)
    assert test.loc[test["time"] < 500, "risk"].mean() > test.loc[test["time"] > 500, "risk"].mean()
    assert table.loc[0, "c_index"] >= 0.6
    assert torch.load(root / "os/model.pt", weights_only=False)["n_outputs"] == 4
