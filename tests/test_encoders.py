"""Encoder registry: every real loading path, exercised offline with tiny models saved in real formats."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from dataclasses import replace

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
    for name in ("conch", "conch.open_clip_custom"):  # import -> ImportError, even if installed and imported
        monkeypatch.setitem(sys.modules, name, None)
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


# ---- image-only foundation models (timm / transformers), offline, random weights ----------------------
#
# Each checkpoint is built from the model's own timm architecture (or transformers config) with the
# card's create_model kwargs, saved in the hub's format (config.json + model.safetensors or
# pytorch_model.bin) into a Hugging Face cache snapshot, and loaded by registry name and by hf-hub id
# through the same timm.create_model("hf-hub:...") / AutoModel call the real id uses, offline.
# Sizes are SHRUNK for speed (depth -> 2, width -> 64-96 keeping each model's head count); the full-size
# architectures are checked separately on the meta device (no memory) for their documented dims.

SMALL = {  # name: (repo, timm architecture, hub config model_args (shrunk where the card does not fix them), weights)
    "uni": ("MahmoodLab/UNI", "vit_large_patch16_224", {"depth": 2, "embed_dim": 64}, "pytorch_model.bin"),
    "uni2-h": ("MahmoodLab/UNI2-h", "vit_giant_patch14_224", {}, "pytorch_model.bin"),
    "virchow2": (
        "paige-ai/Virchow2", "vit_huge_patch14_224",
        {"img_size": 224, "init_values": 1e-5, "num_classes": 0, "reg_tokens": 4, "mlp_ratio": 5.3375,
         "global_pool": "", "dynamic_img_size": True, "depth": 2, "embed_dim": 96},
        "model.safetensors",
    ),
    "h-optimus-0": ("bioptimus/H-optimus-0", "vit_giant_patch14_reg4_dinov2", {"img_size": 224, "depth": 2, "embed_dim": 96},
                    "model.safetensors"),
    "prov-gigapath": (
        "prov-gigapath/prov-gigapath", "vit_giant_patch14_dinov2",
        {"img_size": 224, "in_chans": 3, "patch_size": 16, "embed_dim": 96, "depth": 2, "num_heads": 24,
         "init_values": 1e-5, "mlp_ratio": 5.33334, "num_classes": 0},
        "pytorch_model.bin",
    ),
}  # fmt: skip
UNI2_SHRUNK = {"depth": 2, "embed_dim": 96}  # the card's own kwargs fix UNI2-h's size: shrink those


def _card_kwargs(name):
    from slidesnake.features.encoders import VISION_RECIPES, _resolve_dotted

    return {k: _resolve_dotted(v) for k, v in VISION_RECIPES[name].kwargs.items()}


def _save_timm_checkpoint(folder, name, seed=0):
    import safetensors.torch
    import timm

    _, arch, model_args, weights = SMALL[name]
    spec = REGISTRY[name]
    torch.manual_seed(seed)
    model = timm.create_model(arch, pretrained=False, **{"num_classes": 0, **model_args, **_card_kwargs(name)})
    folder.mkdir(parents=True)
    config = {
        "architecture": arch, "num_classes": 0, "model_args": model_args,
        "pretrained_cfg": {"mean": list(spec.mean), "std": list(spec.std), "input_size": [3, 224, 224]},
    }  # fmt: skip
    (folder / "config.json").write_text(json.dumps(config))
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if weights == "model.safetensors":
        safetensors.torch.save_file(state, folder / weights)
    else:
        torch.save(state, folder / weights)
    return model.eval()


def _normalise(pixels, spec):
    x = pixels.permute(0, 3, 1, 2).float() / 255
    return (x - torch.tensor(spec.mean).view(1, 3, 1, 1)) / torch.tensor(spec.std).view(1, 3, 1, 1)


TILES = torch.randint(0, 256, (2, 224, 224, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("name", sorted(SMALL))
def test_timm_foundation_models_load_offline_through_the_hub_id(name, tmp_path, offline_cache, monkeypatch):
    from slidesnake.features import encoders as enc

    if name == "uni2-h":
        recipe = enc.VISION_RECIPES[name]
        monkeypatch.setitem(enc.VISION_RECIPES, name, replace(recipe, kwargs={**recipe.kwargs, **UNI2_SHRUNK}))
    repo = SMALL[name][0]
    reference = _save_timm_checkpoint(tmp_path / "ckpt", name)
    put_in_hf_cache(offline_cache, repo, tmp_path / "ckpt")
    encoder = load_encoder(name)
    spec = encoder.spec
    assert spec.family == "timm" and not spec.has_text_tower and not spec.normalized
    assert (spec.source, spec.image_size) == (f"hf-hub:{repo}", 224)
    with torch.inference_mode():
        ours = encoder.encode_image(encoder.preprocess(TILES))
        out = reference(_normalise(TILES, spec))
    if name == "virchow2":  # the card: class token + mean of the patch tokens (after the 4 registers)
        assert out.shape[1] == 1 + 4 + 256
        expected = torch.cat([out[:, 0], out[:, 5:].mean(1)], dim=-1)
    else:
        expected = out  # model(x): the class token
    assert ours.shape == (2, spec.dim) and spec.dim == expected.shape[1]
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-5)  # the saved random weights were loaded
    assert not torch.allclose(ours[0], ours[1])


def test_gigapath_preprocessing_is_the_cards_resize_256_centre_crop_224(tmp_path, offline_cache):
    from torchvision import transforms

    reference = _save_timm_checkpoint(tmp_path / "ckpt", "prov-gigapath")
    put_in_hf_cache(offline_cache, "prov-gigapath/prov-gigapath", tmp_path / "ckpt")
    encoder = load_encoder("prov-gigapath")
    assert encoder.spec.input_size == 256
    patches = torch.randint(0, 256, (2, 256, 256, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    card = transforms.Compose([
        transforms.Resize(256, interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.CenterCrop(224),
        transforms.Normalize(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)),
    ])  # fmt: skip
    x_card = torch.stack([card(p.permute(2, 0, 1).float() / 255) for p in patches])
    torch.testing.assert_close(encoder.preprocess(patches), x_card, rtol=1e-5, atol=1e-5)
    with torch.inference_mode():
        torch.testing.assert_close(encoder.encode_image(encoder.preprocess(patches)), reference(x_card))


def test_phikon_v2_loads_through_transformers_offline(tmp_path, offline_cache):
    from transformers import AutoModel, Dinov2Config, Dinov2Model

    # the real config's model type and patch size, shrunk: hidden 1024 -> 64, 24 layers -> 2, heads 16 kept
    config = Dinov2Config(hidden_size=64, num_hidden_layers=2, num_attention_heads=16, patch_size=14, image_size=224)
    torch.manual_seed(0)
    Dinov2Model(config).save_pretrained(tmp_path / "phikon", safe_serialization=True)
    (tmp_path / "phikon" / "preprocessor_config.json").write_text(
        json.dumps({"image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225], "crop_size": 224})
    )
    put_in_hf_cache(offline_cache, "owkin/phikon-v2", tmp_path / "phikon")
    encoder = load_encoder("phikon-v2")
    assert encoder.spec.family == "hf_vision" and not encoder.spec.has_text_tower and encoder.spec.dim == 64
    reference = AutoModel.from_pretrained(tmp_path / "phikon").eval()
    with torch.inference_mode():
        expected = reference(pixel_values=_normalise(TILES, encoder.spec)).last_hidden_state[:, 0, :]
        torch.testing.assert_close(encoder.encode_image(encoder.preprocess(TILES)), expected, rtol=1e-4, atol=1e-5)


def test_full_size_architectures_give_the_documented_dims_on_the_meta_device():
    import timm

    for name, (_, arch, model_args, _) in SMALL.items():
        full_args = {k: v for k, v in model_args.items() if k not in ("depth", "embed_dim")}
        with torch.device("meta"):
            model = timm.create_model(arch, pretrained=False, **{"num_classes": 0, **full_args, **_card_kwargs(name)})
            tokens = model.forward_features(torch.empty(1, 3, 224, 224))
        pooled = 2 * model.num_features if REGISTRY[name].pooling == "cls+mean_patch" else model.num_features
        assert pooled == REGISTRY[name].dim, name
        if name == "virchow2":
            assert model.num_prefix_tokens == 5 and tokens.shape == (1, 5 + 256, 1280)
        if name == "uni2-h":
            assert model.num_prefix_tokens == 9 and len(model.blocks) == 24
    assert REGISTRY["phikon-v2"].dim == 1024 and REGISTRY["uni"].dim == 1024


def test_image_only_encoders_are_refused_by_vision_language_steps(tmp_path, offline_cache):
    from slidesnake.features.encoders import ImageOnlyEncoderError, has_text_tower, require_text_tower

    image_only = {n for n, s in REGISTRY.items() if not s.has_text_tower}
    assert image_only == {"uni", "uni2-h", "virchow2", "h-optimus-0", "prov-gigapath", "phikon-v2"}
    assert has_text_tower("conch") and has_text_tower("tiny-clip") and not has_text_tower("virchow2")
    require_text_tower("quiltnet-b-32", "zero-shot")  # a VLM passes
    with pytest.raises(ImageOnlyEncoderError, match=r"encoder 'uni' \(hf-hub:MahmoodLab/UNI\) is an image-only"):
        require_text_tower("uni", "zero-shot classification")
    _save_timm_checkpoint(tmp_path / "ckpt", "h-optimus-0")
    put_in_hf_cache(offline_cache, "bioptimus/H-optimus-0", tmp_path / "ckpt")
    encoder = load_encoder("h-optimus-0")
    with pytest.raises(ImageOnlyEncoderError, match="no text tower.*conch"):
        encoder.encode_text(["adenocarcinoma"])


def test_missing_foundation_model_weights_say_how_to_prefetch(offline_cache):
    with pytest.raises(EncoderNotFoundError, match=r"MahmoodLab/UNI2-h/config.json.*HF_HUB_OFFLINE=1.*hf auth login"):
        load_encoder("uni2-h")
