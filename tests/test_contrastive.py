"""Contrastive losses and loop, the caption corpus, and a pipeline-trained encoder loaded through the registry."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from slidesnake.data import demo
from slidesnake.data.captions_corpus import (
    KINDS,
    CorpusConfig,
    read_corpus,
    render_corpus,
    split_regions,
    write_corpus,
)
from slidesnake.features.encoders import load_encoder
from slidesnake.train.contrastive import ContrastiveParams, clip_loss, fit_contrastive, milnce_loss, pretrain_clip


def test_clip_loss_is_the_symmetric_cross_entropy_of_scaled_cosines():
    gen = torch.Generator().manual_seed(0)
    img, txt = torch.randn(6, 8, generator=gen), torch.randn(6, 8, generator=gen)
    logits = 10 * F.normalize(img, dim=-1) @ F.normalize(txt, dim=-1).T
    target = torch.arange(6)
    expected = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
    assert clip_loss(img, txt, 10.0).item() == pytest.approx(expected.item(), rel=1e-6)
    assert clip_loss(txt, txt, 10.0) < clip_loss(img, txt, 10.0)


def test_milnce_with_one_positive_each_is_clip_and_with_bags_sums_the_positives():
    gen = torch.Generator().manual_seed(1)
    img, txt = torch.randn(5, 8, generator=gen), torch.randn(5, 8, generator=gen)
    tau = 0.1
    eye = torch.eye(5, dtype=torch.bool)
    assert milnce_loss(img, txt, eye, tau).item() == pytest.approx(clip_loss(img, txt, 1 / tau).item(), rel=1e-5)
    txt4 = torch.randn(4, 8, generator=gen)
    pos = torch.tensor([[1, 1, 0, 0]] * 3 + [[0, 0, 1, 1]] * 2, dtype=torch.bool)
    s = F.normalize(img, dim=-1) @ F.normalize(txt4, dim=-1).T / tau
    per_image = -torch.log((s.exp() * pos).sum(1) / s.exp().sum(1))
    per_text = -torch.log((s.exp() * pos).sum(0) / s.exp().sum(0))
    expected = (per_image.mean() + per_text.mean()) / 2
    assert milnce_loss(img, txt4, pos, tau).item() == pytest.approx(expected.item(), rel=1e-5)


def test_the_loop_restores_the_best_validation_state_and_stops_early():
    model = torch.nn.Linear(2, 1)
    val = iter([3.0, 1.0, 2.0, 2.5, 4.0, 5.0])
    states = []

    def batches(epoch):
        yield torch.ones(4, 2)

    def loss(batch):
        return model(batch).pow(2).mean()

    def validation():
        states.append(model.weight.detach().clone())
        return next(val)

    history = fit_contrastive(
        model, model.parameters(), loss, batches, 1, ContrastiveParams(epochs=6, lr=0.1, patience=2), validation
    )
    assert len(history) == 4  # epochs 2 and 3 did not improve on epoch 1
    assert [row["best"] for row in history] == [0.0, 1.0, 0.0, 0.0]
    torch.testing.assert_close(model.weight, states[1])


def test_the_caption_corpus_uses_other_slides_and_seeds_than_the_demo_cohort():
    cfg = CorpusConfig(regions_per_kind=1, tiles_20x_per_region=4, tiles_5x_per_region=2, captions_per_tile=3)
    sheet = demo.demo_sheet(demo.DemoConfig(), "")
    regions = {s: split_regions(cfg, s) for s in ("train", "val", "test")}
    assert not set(sheet["slide_id"]) & {r for rs in regions.values() for r in rs}
    assert not set(regions["train"]) & set(regions["test"])
    corpus = render_corpus(cfg, "test")
    assert set(corpus["kind"]) == set(KINDS)
    assert corpus["tiles"].shape[1:] == (64, 64, 3) and corpus["captions"].shape[1] == 3
    again = render_corpus(cfg, "test")
    np.testing.assert_array_equal(corpus["tiles"], again["tiles"])
    assert not np.array_equal(render_corpus(cfg, "train")["tiles"], corpus["tiles"])
    low = corpus["captions"][corpus["magnification"] == 5]
    assert any("5x" in c or "low" in c for row in low for c in row)
    solid = corpus["tiles"][corpus["kind"] == "solid"].mean()
    fat = corpus["tiles"][corpus["kind"] == "fat"].mean()
    assert solid < fat - 40  # dense nuclei are darker than clear fat


def test_a_pretrained_folder_loads_through_the_registry_under_its_trained_name(tmp_path):
    cfg = CorpusConfig(regions_per_kind=1, tiles_20x_per_region=4, tiles_5x_per_region=2, captions_per_tile=2)
    for split in ("train", "val"):
        write_corpus(cfg, split, tmp_path / f"{split}.h5")
    history = pretrain_clip(
        str(tmp_path / "train.h5"),
        str(tmp_path / "val.h5"),
        str(tmp_path / "demo-clip"),
        batch_size=8,
        params=ContrastiveParams(epochs=2, lr=1e-3, device="cpu"),
    )
    assert len(history) == 2
    folder = tmp_path / "demo-clip"
    assert {p.name for p in folder.iterdir()} >= {
        "open_clip_config.json",
        "open_clip_model.safetensors",
        "training.json",
    }
    record = json.loads((folder / "training.json").read_text())
    assert record["name"] == "demo-clip" and record["objective"] == "clip"
    encoder = load_encoder(str(folder))
    assert encoder.spec.name == "demo-clip" and encoder.spec.source == str(folder)
    tiles = torch.from_numpy(read_corpus(tmp_path / "val.h5")["tiles"][:3])
    with torch.no_grad():
        image = encoder.encode_image(encoder.preprocess(tiles))
        text = encoder.encode_text(["solid tumour.", "fat."])
    assert image.shape == (3, 64) and text.shape == (2, 64)


def test_cplip_tunes_only_the_projection_heads_by_default_and_bags_are_class_positives():
    import open_clip

    from slidesnake.features.encoders import TINY_CLIP_CFG
    from slidesnake.models.vl.cplip import positive_mask, text_bag, trainable_parameters

    model = open_clip.CLIP(**TINY_CLIP_CFG)
    params = trainable_parameters(model)
    assert {id(p) for p in params} == {id(model.visual.proj), id(model.text_projection)}
    assert sum(p.requires_grad for p in model.parameters()) == 2
    deeper = trainable_parameters(model, "last_block")
    assert len(deeper) > 2 and not model.visual.transformer.resblocks[0].attn.in_proj_weight.requires_grad
    with pytest.raises(ValueError, match="vl.cplip.tune"):
        trainable_parameters(model, "everything")
    bags = {"a": [f"a{i}" for i in range(10)], "b": ["b0", "b1"]}
    texts, index = text_bag(bags, ["a", "b"], 4, np.random.default_rng(0))
    assert len(texts) == 6 and index.tolist() == [0, 0, 0, 0, 1, 1] and set(texts[4:]) == {"b0", "b1"}
    mask = positive_mask(torch.tensor([0, 1, 1]), torch.from_numpy(index))
    assert mask.tolist()[0] == [True] * 4 + [False] * 2 and mask.tolist()[1] == [False] * 4 + [True] * 2


def test_a_retrieved_image_bag_holds_a_slides_class_focus_that_a_random_bag_mostly_misses():
    """CPLIP's retrieved visual bags: of a slide whose class shows in 6 of 200 patches (the rest a stroma
    that both classes share), the 6 patches closest to its class direction are exactly the focus."""
    from slidesnake.models.vl.cplip import class_directions, retrieve_bag

    rng = np.random.default_rng(0)
    text = rng.normal(size=(6, 16))
    text_class = np.array([0, 0, 0, 1, 1, 1])
    directions = class_directions(text, text_class, 2)
    manual = text[:3] / np.linalg.norm(text[:3], axis=1, keepdims=True)
    np.testing.assert_allclose(directions[0], manual.mean(0) / np.linalg.norm(manual.mean(0)), rtol=1e-6)
    stroma = rng.normal(size=(200, 16))
    focus = rng.choice(200, size=6, replace=False)
    stroma[focus] = 3 * directions[1] + 0.3 * rng.normal(size=(6, 16))
    assert retrieve_bag(stroma, directions[1], 6).tolist() == sorted(focus.tolist())
    random_bag = rng.choice(200, size=6, replace=False)
    assert len(set(random_bag) & set(focus)) <= 2
    assert retrieve_bag(stroma[:4], directions[1], 6).tolist() == [0, 1, 2, 3]  # fewer patches than the bag
