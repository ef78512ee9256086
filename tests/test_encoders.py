"""Encoder registry: every real loading path, exercised offline with tiny models saved in real formats."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import open_clip
import pytest
import torch
from huggingface_hub import constants as hf_constants

from slidesnake.features.encoders import (
    REGISTRY,
    EncoderDependencyError,
    EncoderFormatError,
    EncoderNotFoundError,
    list_encoders,
    load_encoder,
)
from tests._feature_fixtures import (
    TINY_MEAN,
    TINY_OPEN_CLIP_CFG,
    TINY_STD,
    put_in_hf_cache,
    save_hf_clip_folder,
    save_open_clip_folder,
    tiny_open_clip,
)

PIXELS = torch.randint(0, 256, (3, 32, 32, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    """An empty HF cache, offline, with any socket connection failing the test."""
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache))

    def no_network(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    return cache


def _images(encoder, pixels=PIXELS):
    with torch.inference_mode():
        return encoder.encode_image(encoder.preprocess(pixels))


def _direct_open_clip(model, pixels=PIXELS):
    x = pixels.permute(0, 3, 1, 2).float() / 255
    x = (x - torch.tensor(TINY_MEAN).view(1, 3, 1, 1)) / torch.tensor(TINY_STD).view(1, 3, 1, 1)
    with torch.inference_mode():
        return model.encode_image(x)


def test_registry_lists_the_seed_encoders_with_dims_and_sources():
    specs = {s.name: s for s in list_encoders()}
    assert specs["quiltnet-b-32"].source == "hf-hub:wisdomik/QuiltNet-B-32"
    assert specs["plip"].family == "hf_clip" and specs["plip"].dim == 512
    assert specs["conch"].normalized and specs["conch"].image_size == 448
    assert specs["tiny-clip"].family == "tiny" and specs["tiny-clip"].dim == 64


def test_open_clip_hub_id_loads_from_cache_offline(tmp_path, offline_cache):
    model = tiny_open_clip(seed=3)
    put_in_hf_cache(offline_cache, "wisdomik/QuiltNet-B-32", save_open_clip_folder(tmp_path / "oc", model))
    for name in ("quiltnet-b-32", "hf-hub:wisdomik/QuiltNet-B-32"):
        encoder = load_encoder(name)
        assert encoder.spec.family == "open_clip" and encoder.spec.dim == 24 and encoder.spec.image_size == 32
        assert encoder.spec.mean == TINY_MEAN and encoder.spec.std == TINY_STD
        torch.testing.assert_close(_images(encoder), _direct_open_clip(model))
        text = encoder.encode_text(["adenocarcinoma", "squamous cell carcinoma"])
        assert text.shape == (2, 24)
        torch.testing.assert_close(text.norm(dim=-1), torch.ones(2))
    assert load_encoder("quiltnet-b-32").spec.source == "hf-hub:wisdomik/QuiltNet-B-32"
    assert load_encoder("quiltnet-b-32").logit_scale == pytest.approx(1 / 0.07, rel=1e-5)


def test_hf_clip_hub_id_loads_from_cache_offline_and_matches_transformers(tmp_path, offline_cache):
    from transformers import CLIPModel

    folder = save_hf_clip_folder(tmp_path / "plip")
    put_in_hf_cache(offline_cache, "vinid/plip", folder)
    encoder = load_encoder("plip")
    assert encoder.spec.family == "hf_clip" and encoder.spec.dim == 20 and encoder.spec.source == "hf-hub:vinid/plip"
    reference = CLIPModel.from_pretrained(folder)
    x = encoder.preprocess(PIXELS)
    with torch.inference_mode():
        out = reference.get_image_features(pixel_values=x)
        expected = out if isinstance(out, torch.Tensor) else out.pooler_output
    torch.testing.assert_close(_images(encoder), expected)
    text = encoder.encode_text(["tumor", "normal tissue"])
    assert text.shape == (2, 20) and not torch.allclose(text[0], text[1])


def test_local_folders_and_checkpoint_file_load_without_the_hub(tmp_path, offline_cache):
    model = tiny_open_clip(seed=4)
    oc = save_open_clip_folder(tmp_path / "oc_bin", model, safetensors=False)
    torch.testing.assert_close(_images(load_encoder(str(oc))), _direct_open_clip(model))
    torch.testing.assert_close(_images(load_encoder(f"local-dir:{oc}")), _direct_open_clip(model))
    # a bare checkpoint file next to its config, saved as a training run saves it ({'state_dict': ...})
    ckpt = oc / "epoch_10.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, ckpt)
    (oc / "open_clip_pytorch_model.bin").unlink()
    torch.testing.assert_close(_images(load_encoder(str(ckpt))), _direct_open_clip(model))
    assert load_encoder(str(save_hf_clip_folder(tmp_path / "hf"))).spec.family == "hf_clip"


def test_open_clip_architecture_with_checkpoint_file(tmp_path, offline_cache):
    arch = tmp_path / "slidesnake-test-arch.json"
    arch.write_text(json.dumps(TINY_OPEN_CLIP_CFG))
    open_clip.add_model_config(arch)
    model = tiny_open_clip(seed=5)
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    encoder = load_encoder(f"slidesnake-test-arch:{tmp_path / 'weights.pt'}")
    assert encoder.spec.dim == 24
    x = encoder.preprocess(PIXELS)
    with torch.inference_mode():
        torch.testing.assert_close(encoder.encode_image(x), model.encode_image(x))


def test_missing_model_names_the_id_and_the_prefetch_command(offline_cache):
    with pytest.raises(EncoderNotFoundError) as err:
        load_encoder("quiltnet-b-16")
    message = str(err.value)
    assert "wisdomik/QuiltNet-B-16" in message and "HF_HUB_OFFLINE=1" in message
    assert "load_encoder('quiltnet-b-16')" in message
    with pytest.raises(EncoderNotFoundError, match="hf-hub:someone/absent"):
        load_encoder("hf-hub:someone/absent")
    with pytest.raises(EncoderNotFoundError, match="registry name"):
        load_encoder("no-such-encoder")


def test_unknown_folder_format_and_missing_weights_are_named(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(EncoderFormatError, match="open_clip_config.json"):
        load_encoder(str(tmp_path / "empty"))
    folder = save_open_clip_folder(tmp_path / "noweights", tiny_open_clip())
    (folder / "open_clip_model.safetensors").unlink()
    with pytest.raises(EncoderFormatError, match="no weights"):
        load_encoder(str(folder))


def test_conch_without_its_package_names_the_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "conch", None)  # import conch -> ImportError, even if installed
    with pytest.raises(EncoderDependencyError, match="conch.*pip install"):
        load_encoder("conch")


def test_tiny_clip_is_deterministic_across_processes_and_keeps_caller_rng():
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    encoder = load_encoder("tiny-clip")
    assert torch.equal(torch.random.get_rng_state(), before)
    assert encoder.spec == REGISTRY["tiny-clip"]
    code = (
        "import torch; from slidesnake.features.encoders import load_encoder;"
        "e = load_encoder('tiny-clip'); print(repr(sum(float(p.double().sum()) for p in e.parameters())))"
    )
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert float(other.stdout.strip()) == sum(float(p.detach().double().sum()) for p in encoder.parameters())
    # a random ViT still separates colours: red and blue patches are far apart, two reds identical
    red = torch.zeros(2, 64, 64, 3, dtype=torch.uint8)
    red[..., 0] = 200
    blue = torch.zeros(1, 64, 64, 3, dtype=torch.uint8)
    blue[..., 2] = 200
    feats = _images(encoder, torch.cat([red, blue]))
    torch.testing.assert_close(feats[0], feats[1])
    assert torch.cosine_similarity(feats[0], feats[2], dim=0) < 0.99
