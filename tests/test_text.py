"""Prompt expansion and text embeddings: class order, synonym x template expansion, normalised rows."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch

from slidesnake.features.encoders import load_encoder
from slidesnake.features.text import PromptsError, embed_prompts, expand_prompts


def test_expand_lists_and_synonym_templates_in_class_order():
    texts, index, classes = expand_prompts(
        {
            "LUSC": ["squamous cell carcinoma", "an H&E image of LUSC."],
            "LUAD": {"synonyms": ["adenocarcinoma", "LUAD"], "templates": ["CLASSNAME.", "an image of {}."]},
        }
    )
    assert classes == ["LUSC", "LUAD"]
    assert texts == [
        "squamous cell carcinoma",
        "an H&E image of LUSC.",
        "adenocarcinoma.",
        "an image of adenocarcinoma.",
        "LUAD.",
        "an image of LUAD.",
    ]
    assert index == [0, 0, 1, 1, 1, 1]


@pytest.mark.parametrize(
    "bad, match",
    [
        ({}, "non-empty"),
        ({"A": []}, "'A' has no prompts"),
        ({"A": "text"}, "'A' must map"),
        ({"A": {"templates": ["no slot"]}}, "placeholder"),
    ],
)
def test_malformed_prompts_are_named(bad, match):
    with pytest.raises(PromptsError, match=match):
        expand_prompts(bad, "p.json")


def test_embed_prompts_writes_normalised_embeddings_equal_to_the_text_tower(tmp_path):
    prompts = {
        "tumor": ["tumor tissue", "carcinoma"],
        "normal": {"synonyms": ["normal"], "templates": ["CLASSNAME tissue."]},
    }
    (tmp_path / "p.json").write_text(json.dumps(prompts))
    embed_prompts("tiny-clip", tmp_path / "p.json", tmp_path / "text.h5", device="cpu")
    with h5py.File(tmp_path / "text.h5", "r") as f:
        emb = f["embeddings"][()]
        index = f["class_index"][()]
        texts = [t.decode() for t in f["prompts"][()]]
        attrs = dict(f.attrs)
    assert emb.shape == (3, 64) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert index.tolist() == [0, 0, 1] and texts == ["tumor tissue", "carcinoma", "normal tissue."]
    assert json.loads(attrs["classes"]) == ["tumor", "normal"] and attrs["encoder"] == "tiny-clip"
    with torch.inference_mode():
        direct = load_encoder("tiny-clip").encode_text(texts).numpy()
    np.testing.assert_allclose(emb, direct, atol=1e-5)
    assert not np.allclose(emb[0], emb[2], atol=1e-3)
