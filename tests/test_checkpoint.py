"""model.pt: what it records, and loaders (heatmaps, second stages) refusing features it was not trained on."""

import numpy as np
import pytest
import torch

from slidesnake.evaluate.heatmaps import attention_scores
from slidesnake.io.atomic import write_h5
from slidesnake.io.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from slidesnake.models import registry


def _record(model_name="abmil", encoder="tiny-clip", magnification=20):
    model = registry.build(model_name, 8, 2, hidden=16, dropout=0.0)
    return {
        "state_dict": model.state_dict(),
        "model": model_name,
        "encoder": encoder,
        "magnification": magnification,
        "in_dim": 8,
        "n_outputs": 2,
        "model_kwargs": {"hidden": 16, "dropout": 0.0},
        "task": {"name": "subtype", "kind": "classification"},
        "classes": ["a", "b"],
        "params": {"epochs": 1},
    }


def _features(path, encoder, magnification=20):
    rng = np.random.default_rng(0)
    coords = np.stack([np.arange(5) * 256, np.zeros(5)], 1).astype(np.int64)
    attrs = {"encoder": encoder, "dim": 8, "magnification": magnification, "patch_size": 256, "patch_size_level0": 256}
    write_h5(path, {"features": rng.normal(size=(5, 8)).astype(np.float32), "coords": coords}, attrs)
    return path


def test_round_trip_and_checks(tmp_path):
    save_checkpoint(tmp_path / "model.pt", _record())
    record = load_checkpoint(tmp_path / "model.pt", {"model": "abmil", "encoder": "tiny-clip", "magnification": 20.0})
    assert record["format_version"] == 1 and record["classes"] == ["a", "b"]
    model = registry.from_checkpoint(record)
    assert not model.training and torch.equal(
        model.state_dict()["classifier.weight"], record["state_dict"]["classifier.weight"]
    )
    with pytest.raises(CheckpointError, match="encoder='tiny-clip' but is used with encoder='conch'"):
        load_checkpoint(tmp_path / "model.pt", {"encoder": "conch"})
    with pytest.raises(CheckpointError, match="magnification"):
        load_checkpoint(tmp_path / "model.pt", {"magnification": 5})
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pt.*rerun the train rule"):
        load_checkpoint(tmp_path / "junk.pt")
    with pytest.raises(CheckpointError, match="lacks"):
        save_checkpoint(tmp_path / "bad.pt", {"model": "abmil"})


def test_heatmaps_refuse_features_of_another_encoder_or_magnification(tmp_path):
    save_checkpoint(tmp_path / "model.pt", _record())
    coords, scores = attention_scores(tmp_path / "model.pt", _features(tmp_path / "ok.h5", "tiny-clip"), device="cpu")
    assert len(scores) == 5 and np.isclose(scores.sum(), 1.0, atol=1e-5)
    with pytest.raises(CheckpointError, match="plip"):
        attention_scores(tmp_path / "model.pt", _features(tmp_path / "other.h5", "plip"), device="cpu")
    with pytest.raises(CheckpointError, match="magnification=20"):
        attention_scores(tmp_path / "model.pt", _features(tmp_path / "x5.h5", "tiny-clip", 5), device="cpu")
