"""train_fold end to end on a synthetic cohort: learning, val-only selection, outputs, skipped empty slides."""

import logging

import numpy as np
import pandas as pd
import pytest
import torch
from _mil_fixtures import write_cohort

from slidesnake.errors import ConfigError
from slidesnake.evaluate.metrics import evaluate_predictions
from slidesnake.io.checkpoint import CheckpointError
from slidesnake.models import registry
from slidesnake.tasks import Task, task_from_config, task_labels
from slidesnake.train import loop
from slidesnake.train.loop import TrainingDataError, TrainParams, _draw_weights, train_fold
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
    train_fold(
        survival,
        "abmil",
        feats,
        extra,
        folds,
        0,
        TrainParams(**{**FAST, "epochs": 30, "patience": 10}),
        str(root / "os"),
    )
    table = evaluate_predictions(survival, [str(root / "os/predictions.parquet")], n_bootstrap=20)
    pred = pd.read_parquet(root / "os/predictions.parquet")
    test = pred[pred["split"] == "test"]
    # positives die early: their predicted risk must sit above the negatives' (within-group order is noise)
    assert test.loc[test["time"] < 500, "risk"].mean() > test.loc[test["time"] > 500, "risk"].mean()
    assert table.loc[0, "c_index"] >= 0.6
    assert torch.load(root / "os/model.pt", weights_only=False)["n_outputs"] == 4


def test_class_weighting_changes_training_and_sampling_balances_draws(cohort):
    root, task, feats, labels, folds = cohort
    imbalanced = labels[(labels["target"] == 0) | (labels["slide_id"] < "S008")].reset_index(drop=True)
    histories = {}
    for balance in ("weight", "none", "sample"):
        params = TrainParams(**{**FAST, "epochs": 2, "balance": balance})
        train_fold(task, "abmil", feats, imbalanced, folds, 0, params, str(root / f"bal_{balance}"))
        histories[balance] = pd.read_csv(root / f"bal_{balance}/history.csv")
    assert not np.allclose(histories["weight"]["train_loss"], histories["none"]["train_loss"])
    assert not np.allclose(histories["sample"]["train_loss"], histories["none"]["train_loss"])
    train = imbalanced.iloc[:10].assign(target=[0] * 8 + [1] * 2)
    p = _draw_weights(task, "sample", train)
    assert p[:8].sum() == pytest.approx(0.5) and p[8:].sum() == pytest.approx(0.5)
    with pytest.raises(ConfigError, match="training.balance"):
        train_fold(task, "abmil", feats, labels, folds, 0, TrainParams(balance="classes"), str(root / "x"))


def test_all_nan_validation_loss_keeps_the_last_epoch(cohort, monkeypatch, caplog):
    root, task, feats, labels, folds = cohort
    real = loop._evaluate
    monkeypatch.setattr(loop, "_evaluate", lambda *a, **k: (float("nan"), real(*a, **k)[1]))
    train_fold(task, "abmil", feats, labels, folds, 0, TrainParams(**{**FAST, "epochs": 3}), str(root / "nan"))
    assert torch.load(root / "nan/model.pt", weights_only=True)["best_epoch"] == 2
    assert any("NaN in every epoch" in r.getMessage() for r in caplog.records)


def test_one_progress_line_per_epoch_with_eta(cohort, caplog):
    root, task, feats, labels, folds = cohort
    with caplog.at_level(logging.INFO, logger="slidesnake.train.loop"):
        train_fold(task, "abmil", feats, labels, folds, 2, TrainParams(**{**FAST, "epochs": 3}), str(root / "log"))
    lines = [r.getMessage() for r in caplog.records if " epoch " in r.getMessage() and "ETA" in r.getMessage()]
    assert [line.split(":")[0] for line in lines] == [f"abmil fold 2 epoch {e}/3" for e in (1, 2, 3)]
    assert all("train loss" in line and "val auc" in line for line in lines)


def test_loop_loads_exactly_the_declared_inputs(cohort, monkeypatch):
    root, task, feats, labels, folds = cohort
    seen = {}
    for name in ("abmil", "patchgcn"):
        cls = registry.get(name).cls
        real = cls.forward

        def record(self, features, coords=None, mask=None, label=None, _real=real, _name=name):
            seen[_name] = coords is not None
            return _real(self, features, coords=coords, mask=mask, label=label)

        monkeypatch.setattr(cls, "forward", record)
        train_fold(task, name, feats, labels, folds, 0, TrainParams(**{**FAST, "epochs": 1}), str(root / f"in_{name}"))
    assert seen == {"abmil": False, "patchgcn": True}


def test_two_stage_model_starts_from_the_same_folds_first_stage(cohort, monkeypatch):
    root, task, feats, labels, folds = cohort
    first = root / "stage1/model.pt"
    train_fold(task, "abmil", feats, labels, folds, 0, TrainParams(**{**FAST, "epochs": 2}), str(first.parent))
    calls = []

    cls = registry.get("mhim").cls
    original = cls.init_from_first_stage

    def init(self, first_stage, train_bags):
        calls.append((first_stage, train_bags))
        original(self, first_stage, train_bags)

    monkeypatch.setattr(cls, "init_from_first_stage", init)
    params = TrainParams(**{**FAST, "epochs": 1, "max_instances": 16})
    train_fold(task, "mhim", feats, labels, folds, 0, params, str(root / "mhim"), first_stage=str(first))
    ((model, bags),) = calls
    record = torch.load(first, weights_only=True)
    assert type(model).__name__ == "ABMIL" and not model.training
    assert all(torch.equal(v, record["state_dict"][k]) for k, v in model.state_dict().items())
    train_ids = set(folds[(folds["fold"] == 0) & (folds["split"] == "train")]["slide_id"]) - {"EMPTY0"}
    assert len(bags) == len(train_ids) and all(len(b) == 64 for b in bags)  # full bags, not max_instances
    with pytest.raises(TrainingDataError, match="abmil"):
        train_fold(task, "mhim", feats, labels, folds, 0, params, str(root / "mhim2"))
    wrong = root / "wrong/model.pt"
    train_fold(task, "meanpool", feats, labels, folds, 0, TrainParams(epochs=1), str(wrong.parent))
    with pytest.raises(CheckpointError, match="model='meanpool'"):
        train_fold(task, "mhim", feats, labels, folds, 0, params, str(root / "mhim3"), first_stage=str(wrong))


def test_checkpoint_records_what_the_model_was_trained_on(cohort):
    root, *_ = cohort
    record = torch.load(root / "abmil/fold0/model.pt", weights_only=True)
    assert {"model", "encoder", "magnification", "classes", "task", "params"} <= set(record)
    assert record["model"] == "abmil" and record["params"]["balance"] == "weight"


def test_gradient_accumulation_steps_once_per_that_many_bags(cohort, monkeypatch):
    """training.accumulate: ceil(n_train / k) optimiser steps per epoch, the same summed gradient as one
    k-bag batch; accumulate 1 steps once per bag."""
    root, task, feats, labels, folds = cohort
    n_train = int(((folds["fold"] == 0) & (folds["split"] == "train") & (folds["slide_id"] != "EMPTY0")).sum())
    steps = []
    original = torch.optim.AdamW.step

    def counting(self, *args, **kwargs):
        steps.append(sum(p.grad is not None for group in self.param_groups for p in group["params"]))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", counting)
    for accumulate in (1, 4):
        steps.clear()
        params = TrainParams(**{**FAST, "epochs": 2, "patience": 5, "accumulate": accumulate})
        train_fold(task, "abmil", feats, labels, folds, 0, params, str(root / f"acc{accumulate}"))
        assert len(steps) == 2 * -(-n_train // accumulate), (accumulate, n_train, len(steps))
    checkpoint = torch.load(root / "acc4/model.pt", weights_only=False)
    assert checkpoint["params"]["accumulate"] == 4
