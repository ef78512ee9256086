"""HiVE-MIL and ViLa-MIL through the training loop: few-shot split, text tower and prompts, the standard outputs."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from conftest import REPO

from slidesnake.evaluate.descriptions import DescriptionError, describe, description_figure, description_table
from slidesnake.evaluate.heatmaps import attention_scores
from slidesnake.evaluate.metrics import evaluate_predictions
from slidesnake.features.encoders import load_encoder
from slidesnake.io.atomic import write_h5
from slidesnake.models import registry
from slidesnake.models.vl.hier_prompts import load_hier_prompts
from slidesnake.models.vl.prompt_learner import text_tower
from slidesnake.tasks import task_from_config, task_labels
from slidesnake.train.loop import TrainParams, train_fold
from slidesnake.train.splits import make_fewshot_splits
from slidesnake.train.text_inputs import TextInputError, text_inputs_from_checkpoint

torch.set_num_threads(1)
PROMPTS = REPO / "config/prompts/demo_hier.json"
CLASSES = ["glandular", "solid"]  # the sorted labels: the loop's class order
FAST = dict(epochs=4, patience=3, lr=1e-3, dropout=0.0)
N5 = 5


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """20 patients, one slide each; a slide's children (parents) lean toward its class's fine (coarse) texts
    as tiny-clip encodes them, so the text side carries the class signal. Hierarchy h5s per DESIGN §2."""
    root = tmp_path_factory.mktemp("vl")
    prompts = load_hier_prompts(PROMPTS, CLASSES)
    tower = text_tower(load_encoder("tiny-clip"))
    with torch.no_grad():
        coarse = F.normalize(tower.reference_encode(prompts.coarse_texts()), dim=-1).view(2, 4, -1).numpy()
        fine = F.normalize(tower.reference_encode(prompts.fine_texts()), dim=-1).view(2, 12, -1).numpy()
    dim = coarse.shape[-1]
    rng = np.random.default_rng(0)
    rows, hier = [], {}
    for p in range(20):
        y = p % 2
        slide_id = f"S{p:02d}"
        x20 = rng.normal(0, 1 / 8, (N5, 16, dim)).astype(np.float32)
        x20 += 1.5 * (rng.random((N5, 16, 1)) < 0.3) * fine[y][rng.integers(0, 12, (N5, 16))]
        x5 = (rng.normal(0, 1 / 8, (N5, dim)) + 0.75 * coarse[y][rng.integers(0, 4, N5)]).astype(np.float32)
        mask = rng.random((N5, 16)) > 0.1
        parents = np.stack([np.arange(N5) * 1024, np.zeros(N5)], 1).astype(np.int64)
        slots = np.arange(16)
        coords = parents[:, None, :] + 256 * np.stack([slots % 4, slots // 4], 1)[None]
        hier[slide_id] = str(root / f"{slide_id}.h5")
        write_h5(
            hier[slide_id],
            {
                "features": x20,
                "mask": mask,
                "coords": coords.astype(np.int64),
                "parent_coords": parents,
                "parent_features": x5,
            },
            {"encoder": "tiny-clip", "dim": dim},
        )
        rows.append({"slide_id": slide_id, "case_id": f"P{p:02d}", "label": CLASSES[y]})
    sheet = pd.DataFrame(rows).astype(str)
    task = task_from_config("subtype", {"kind": "classification", "column": "label"})
    labels = task_labels(task, sheet)
    splits = make_fewshot_splits(sheet, 4, repeats=2, seed=0)[4]
    return root, task, labels, splits, hier


@pytest.mark.parametrize("name", ["hivemil", "vilamil"])
def test_vl_models_train_on_a_fewshot_split_and_write_the_contract(cohort, name):
    root, task, labels, splits, hier = cohort
    out = root / name / "fold1"
    train_fold(
        task,
        name,
        hier,
        labels,
        splits,
        1,
        TrainParams(**FAST),
        str(out),
        hierarchy=hier,
        text_encoder="tiny-clip",
        hier_prompts=str(PROMPTS),
    )
    pred = pd.read_parquet(out / "predictions.parquet")
    split = splits[splits["fold"] == 1]
    assert (split["split"] == "train").sum() == 8  # 4 slides per class: what the model trained on
    expected = split[split["split"].isin(["val", "test"])]
    assert sorted(pred["slide_id"]) == sorted(expected["slide_id"])
    assert list(pred.columns[:4]) == ["slide_id", "case_id", "fold", "split"] and set(pred["fold"]) == {1}
    assert np.allclose(pred[[f"prob_{c}" for c in CLASSES]].sum(axis=1), 1.0)
    metrics = evaluate_predictions(task, [str(out / "predictions.parquet")], n_bootstrap=20)
    assert {"auc", "auc_ci_low", "auc_ci_high"} <= set(metrics.columns)  # per-patient metrics and CIs apply
    history = pd.read_csv(out / "history.csv")
    record = torch.load(out / "model.pt", weights_only=True)
    assert record["best_epoch"] == int(history["val_loss"].idxmin())  # chosen on val only
    assert record["model"] == name and record["classes"] == CLASSES and record["text_encoder"] == "tiny-clip"
    assert record["hier_prompts"]["classes"] == CLASSES
    assert not any(k.startswith("tower.") for k in record["state_dict"])  # the frozen tower is not saved
    assert "prompt_learner.ctx" in record["state_dict"]
    # the checkpoint alone rebuilds the model (heatmaps do this): same test scores as written
    model = registry.from_checkpoint(record, **text_inputs_from_checkpoint(record))
    test = pred[pred["split"] == "test"].iloc[0]
    with h5_bag(hier[test["slide_id"]]) as (x20, mask, x5), torch.inference_mode():
        probs = torch.softmax(model(x20, mask=mask, parent_features=x5).logits, -1).numpy()
    assert np.allclose(probs, test[[f"prob_{c}" for c in CLASSES]].to_numpy(float), atol=1e-5)
    # heatmaps: one score per 5x parent, at the parent coords, from the model.pt alone
    coords, scores = attention_scores(out / "model.pt", hier[test["slide_id"]], hier[test["slide_id"]], device="cpu")
    with h5_bag(hier[test["slide_id"]]) as (x20, mask, x5), torch.inference_mode():
        expected = model(x20, mask=mask, parent_features=x5).attention.numpy()
    assert coords.shape == (N5, 2) and coords[:, 0].tolist() == [1024 * i for i in range(N5)]
    assert np.allclose(scores, expected, atol=1e-6) and np.ptp(scores) > 0


class h5_bag:  # noqa: N801 - a tiny context manager reading the three tensors the models take
    def __init__(self, path):
        self.path = path

    def __enter__(self):
        from slidesnake.train.data import load_bag

        bag = load_bag(self.path, "hierarchy", parent_features=True)
        return bag.features, bag.mask, bag.parent_features

    def __exit__(self, *exc):
        return False


def test_the_loop_feeds_the_parents_own_features(cohort, monkeypatch):
    root, task, labels, splits, hier = cohort
    cls = registry.get("vilamil").cls
    seen = []
    real = cls.forward

    def spy(self, features, coords=None, mask=None, label=None, parent_features=None):
        seen.append((features.shape, None if parent_features is None else parent_features.shape))
        return real(self, features, coords=coords, mask=mask, label=label, parent_features=parent_features)

    monkeypatch.setattr(cls, "forward", spy)
    params = TrainParams(**{**FAST, "epochs": 1})
    train_fold(
        task,
        "vilamil",
        hier,
        labels,
        splits,
        0,
        params,
        str(root / "spy"),
        hierarchy=hier,
        text_encoder="tiny-clip",
        hier_prompts=str(PROMPTS),
    )
    assert seen and all(f[:2] == (N5, 16) and p == (N5, f[2]) for f, p in seen)


def test_missing_text_tower_or_prompt_class_fails_naming_the_keys(cohort, tmp_path):
    root, task, labels, splits, hier = cohort
    params = TrainParams(**{**FAST, "epochs": 1})
    args = (task, "hivemil", hier, labels, splits, 0, params, str(tmp_path / "x"))
    with pytest.raises(TextInputError, match=r"'uni'.*training\.encoder"):
        train_fold(*args, hierarchy=hier, text_encoder="uni", hier_prompts=str(PROMPTS))
    with pytest.raises(TextInputError, match=r"tasks\.subtype\.hier_prompts"):
        train_fold(*args, hierarchy=hier, text_encoder="tiny-clip", hier_prompts=None)
    one_class = json.loads(PROMPTS.read_text())
    del one_class["solid"]
    bad = tmp_path / "one_class.json"
    bad.write_text(json.dumps(one_class))
    with pytest.raises(TextInputError, match=r"one_class\.json.*\['solid'\].*tasks\.subtype\.hier_prompts"):
        train_fold(*args, hierarchy=hier, text_encoder="tiny-clip", hier_prompts=str(bad))
    assert not (tmp_path / "x").exists()  # nothing written before the error


def test_description_table_names_the_descriptions_behind_each_test_prediction(cohort):
    root, task, labels, splits, hier = cohort
    params = TrainParams(**{**FAST, "epochs": 1})
    for name in ("hivemil", "vilamil"):
        train_fold(
            task, name, hier, labels, splits, 0, params, str(root / f"desc_{name}"), hierarchy=hier,
            text_encoder="tiny-clip", hier_prompts=str(PROMPTS),
        )  # fmt: skip
    splits_csv = root / "splits.csv"
    splits.to_csv(splits_csv, index=False)
    table = description_table({0: root / "desc_hivemil/model.pt"}, splits_csv, hier)
    test = splits[(splits["fold"] == 0) & (splits["split"] == "test")]
    assert sorted(table["slide_id"]) == sorted(test["slide_id"])
    pred = pd.read_parquet(root / "desc_hivemil/predictions.parquet").set_index("slide_id")
    prompts = load_hier_prompts(PROMPTS, CLASSES)
    for row in table.itertuples():
        assert row.predicted == CLASSES[int(np.argmax(pred.loc[row.slide_id, [f"prob_{c}" for c in CLASSES]]))]
        c = CLASSES.index(row.predicted)
        assert row.coarse_1 in prompts.coarse[c] and row.coarse_1_score >= row.coarse_2_score
        k = prompts.coarse[c].index(row.fine_1_under)
        assert row.fine_1 in prompts.fine[c][k]  # each fine description named with its own coarse parent
        assert 0.0 <= row.hit_ratio_at_2 <= 1.0
    # the scores are the logit's parts: a class's logit = mean of its coarse + mean of its fine scores
    record = torch.load(root / "desc_hivemil/model.pt", weights_only=True)
    model = registry.from_checkpoint(record, **text_inputs_from_checkpoint(record))
    with h5_bag(hier[table["slide_id"].iloc[0]]) as (x20, mask, x5):
        out = model.explain(x20, mask=mask, parent_features=x5)
        logits = model(x20, mask=mask, parent_features=x5).logits.detach()
    parts = out["coarse"].view(2, -1).mean(1) + out["fine"].view(2, -1).mean(1)
    assert torch.allclose(parts, logits, atol=1e-5) and torch.allclose(out["logits"], logits)
    with pytest.raises(DescriptionError, match="hivemil only"):
        description_table({0: root / "desc_vilamil/model.pt"}, splits_csv, hier)
    # the long table behind the figure: every description of the predicted class, its own top-2 the table's
    table, scores = describe({0: root / "desc_hivemil/model.pt"}, splits_csv, hier)
    for row in table.itertuples():
        part = scores[scores["slide_id"] == row.slide_id]
        assert part["level"].value_counts().to_dict() == {"coarse": 4, "fine": 12}
        coarse = part[part["level"] == "coarse"].sort_values("score", ascending=False)
        assert coarse["description"].iloc[0] == row.coarse_1
        assert coarse["score"].iloc[0] == pytest.approx(row.coarse_1_score)
        best_fine = part[part["level"] == "fine"].sort_values("score", ascending=False).iloc[0]
        assert prompts.coarse[CLASSES.index(row.predicted)][best_fine["coarse_index"]] == row.fine_1_under
        assert 0.5 <= row.confidence <= 1.0
    png = root / "descriptions.png"
    description_figure(table, scores, png, n_slides=2)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
