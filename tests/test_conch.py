"""CONCH through the conch-fork package: its own config, random weights saved as its checkpoint format,
both towers through our registry, image features after proj_contrast (what zero-shot needs)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

conch = pytest.importorskip("conch.open_clip_custom")

from slidesnake.features.encoders import conch_tokens, load_encoder  # noqa: E402


def test_conch_tokens_match_conchs_own_tokenize_layout():
    tokenizer = conch.get_tokenizer()
    tokens = conch_tokens(tokenizer, ["solid tumour.", "a gland lined by columnar cells."])
    assert tokens.shape == (2, 128)
    assert (tokens[:, -1] == tokenizer.pad_token_id).all()  # the slot CoCa replaces with <cls>
    ids = tokenizer("solid tumour.")["input_ids"]
    assert tokens[0, : len(ids)].tolist() == ids and ids[0] == tokenizer.bos_token_id
    assert (tokens[0, len(ids) :] == tokenizer.pad_token_id).all()


@pytest.mark.workflow  # builds the full 395M-parameter CONCH (about a minute on 2 cores)
def test_random_weight_conch_runs_both_towers_through_the_registry(tmp_path):
    from conch.open_clip_custom.coca_model import CoCa
    from conch.open_clip_custom.factory import CFG_DIR

    cfg = json.loads((CFG_DIR / "conch_ViT-B-16.json").read_text())
    cfg.pop("custom_text")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = CoCa(**cfg).eval()
    checkpoint = tmp_path / "pytorch_model.bin"
    torch.save(model.state_dict(), checkpoint)
    encoder = load_encoder(f"conch:{checkpoint}")
    assert encoder.spec.family == "conch" and encoder.spec.projected and encoder.spec.normalized
    assert encoder.spec.image_size == 448 and encoder.spec.dim == 512
    patches = torch.from_numpy(np.random.default_rng(0).integers(0, 255, (2, 256, 256, 3), dtype=np.uint8))
    with torch.no_grad():
        images = encoder.preprocess(patches)
        features = encoder.encode_image(images)
        text = encoder.encode_text(["solid tumour.", "adenocarcinoma."])
        expected = model.encode_image(images, proj_contrast=True, normalize=True)
    torch.testing.assert_close(features, expected)
    assert features.shape == (2, 512) and text.shape == (2, 512)
    torch.testing.assert_close(text.norm(dim=-1), torch.ones(2))
    assert encoder.logit_scale == pytest.approx(float(model.logit_scale.exp()))
