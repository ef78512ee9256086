"""Encoder registry: one interface over open_clip, Hugging Face CLIP and CONCH vision-language models,
and the image-only pathology foundation models (UNI, UNI2-h, Virchow2, H-optimus-0, Prov-GigaPath,
Phikon-v2) through timm / transformers.

Each entry knows its source, input size, mean/std, pooling, embedding dim and whether image embeddings
come out L2-normalised; a loaded :class:`Encoder` serves both towers (image and text) where the model
has them. Image-only encoders have ``has_text_tower=False``: anything that needs text (zero-shot,
prompt tuning, retrieval) calls :func:`require_text_tower`, which refuses them with a clear message. Hub ids resolve
through the standard Hugging Face cache, so weights pre-fetched on a login node load offline
(``HF_HUB_OFFLINE=1``) on a compute node under the same id; everything is then loaded from that
local folder, the same code a local checkpoint folder goes through.
"""

from __future__ import annotations

import abc
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from slidesnake.errors import InputError

log = logging.getLogger(__name__)

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HOPTIMUS_MEAN = (0.707223, 0.578729, 0.703617)  # H-optimus-0 model card
HOPTIMUS_STD = (0.211883, 0.230117, 0.177517)
HF_HUB_PREFIX = "hf-hub:"
LOCAL_DIR_PREFIX = "local-dir:"
CONCH_PACKAGE_HINT = "pip install conch-fork==0.1.0  (CONCH's code on PyPI)"

# Weight file names tried in order inside an open_clip folder / Hugging Face CLIP folder.
OPEN_CLIP_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
HF_CLIP_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
HF_CLIP_EXTRA = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
    "merges.txt",
    "special_tokens_map.json",
    "preprocessor_config.json",
)
CONCH_WEIGHTS = "pytorch_model.bin"

# tiny-clip: a random open_clip CLIP from a fixed seed, for the offline demo and tests. Small enough
# to run ~100 patches/s per CPU core; a random ViT still separates colour and texture.
TINY_CLIP_SEED = 0
TINY_CLIP_CFG: dict[str, Any] = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 64, "patch_size": 8, "width": 64, "layers": 2, "head_width": 16, "mlp_ratio": 2.0},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 4, "layers": 2, "mlp_ratio": 2.0},
}


class EncoderNotFoundError(InputError):
    """The name is not a registry entry, a cached/downloadable hub id, or a readable local path."""


class EncoderDependencyError(InputError, ImportError):
    """The encoder needs an optional package that is not installed; the message names it."""


class EncoderFormatError(InputError):
    """A local folder or file exists but is not a format any loader recognises."""


class ImageOnlyEncoderError(ValueError):
    """A vision-language step (zero-shot, prompts, text embeddings) was given an image-only encoder."""


@dataclass(frozen=True)
class EncoderSpec:
    """What a pipeline needs to know about an encoder without loading it."""

    name: str
    source: str
    family: str  # "open_clip" | "hf_clip" | "conch" | "tiny" | "timm" | "hf_vision"
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    dim: int
    normalized: bool
    has_text_tower: bool = True  # False: image-only, refused by every vision-language step
    pooling: str = "projection"  # "projection" (CLIP image tower) | "cls" | "cls+mean_patch"
    projected: bool = True  # image features are the joint image-text space embedding (what zero-shot needs)
    crop_pct: float = 1.0  # < 1: resize to image_size / crop_pct, then centre-crop image_size (timm's convention)

    @property
    def input_size(self) -> int:
        """Side the patch is resized to before the centre crop (image_size when there is no crop)."""
        return self.image_size if self.crop_pct >= 1.0 else round(self.image_size / self.crop_pct)


@dataclass(frozen=True)
class VisionRecipe:
    """How an image-only model is built, as its model card does it.

    ``kwargs`` are the keyword arguments the card passes to ``timm.create_model`` (dotted names of
    layer classes are resolved at load time, so the registry imports neither timm nor torch layers);
    ``architecture`` is the timm architecture (or transformers ``model_type``) of the hub config.
    """

    library: str  # "timm" | "transformers"
    architecture: str
    card: str
    kwargs: dict[str, Any]


# Image embeddings of QuiltNet/PLIP are the raw projections (as in the HiVE-MIL/ViLa-MIL extractors);
# CONCH's are projected and normalised (encode_image(proj_contrast=True, normalize=True)).
REGISTRY: dict[str, EncoderSpec] = {
    spec.name: spec
    for spec in (
        EncoderSpec(
            "quiltnet-b-32", "hf-hub:wisdomik/QuiltNet-B-32", "open_clip", 224, OPENAI_MEAN, OPENAI_STD, 512, False
        ),
        EncoderSpec(
            "quiltnet-b-16", "hf-hub:wisdomik/QuiltNet-B-16", "open_clip", 224, OPENAI_MEAN, OPENAI_STD, 512, False
        ),
        EncoderSpec("plip", "hf-hub:vinid/plip", "hf_clip", 224, OPENAI_MEAN, OPENAI_STD, 512, False),
        EncoderSpec("conch", "hf-hub:MahmoodLab/conch", "conch", 448, OPENAI_MEAN, OPENAI_STD, 512, True),
        # Image-only pathology foundation models (facts from each model card; dims are what the card's
        # recipe returns per 224 px tile). Features are the card's embedding, not L2-normalised.
        EncoderSpec(
            "uni",
            "hf-hub:MahmoodLab/UNI",
            "timm",
            224,
            IMAGENET_MEAN,
            IMAGENET_STD,
            1024,
            False,
            has_text_tower=False,
            pooling="cls",
        ),
        EncoderSpec(
            "uni2-h",
            "hf-hub:MahmoodLab/UNI2-h",
            "timm",
            224,
            IMAGENET_MEAN,
            IMAGENET_STD,
            1536,
            False,
            has_text_tower=False,
            pooling="cls",
        ),
        EncoderSpec(
            "virchow2",
            "hf-hub:paige-ai/Virchow2",
            "timm",
            224,
            IMAGENET_MEAN,
            IMAGENET_STD,
            2560,
            False,
            has_text_tower=False,
            pooling="cls+mean_patch",
        ),
        EncoderSpec(
            "h-optimus-0",
            "hf-hub:bioptimus/H-optimus-0",
            "timm",
            224,
            HOPTIMUS_MEAN,
            HOPTIMUS_STD,
            1536,
            False,
            has_text_tower=False,
            pooling="cls",
        ),
        EncoderSpec(
            "prov-gigapath",
            "hf-hub:prov-gigapath/prov-gigapath",
            "timm",
            224,
            IMAGENET_MEAN,
            IMAGENET_STD,
            1536,
            False,
            has_text_tower=False,
            pooling="cls",
            crop_pct=224 / 256,
        ),
        EncoderSpec(
            "phikon-v2",
            "hf-hub:owkin/phikon-v2",
            "hf_vision",
            224,
            IMAGENET_MEAN,
            IMAGENET_STD,
            1024,
            False,
            has_text_tower=False,
            pooling="cls",
        ),
        EncoderSpec(
            "tiny-clip",
            f"random-init:seed={TINY_CLIP_SEED}",
            "tiny",
            TINY_CLIP_CFG["vision_cfg"]["image_size"],
            OPENAI_MEAN,
            OPENAI_STD,
            TINY_CLIP_CFG["embed_dim"],
            False,
        ),
    )
}


_SWIGLU = {"mlp_layer": "timm.layers.SwiGLUPacked", "act_layer": "torch.nn.SiLU"}

# create_model kwargs exactly as each card passes them (the rest comes from the hub config.json).
VISION_RECIPES: dict[str, VisionRecipe] = {
    "uni": VisionRecipe(
        "timm", "vit_large_patch16_224", "https://huggingface.co/MahmoodLab/UNI",
        {"init_values": 1e-5, "dynamic_img_size": True},
    ),
    "uni2-h": VisionRecipe(
        "timm", "vit_giant_patch14_224", "https://huggingface.co/MahmoodLab/UNI2-h",
        {
            "img_size": 224, "patch_size": 14, "depth": 24, "num_heads": 24, "init_values": 1e-5,
            "embed_dim": 1536, "mlp_ratio": 2.66667 * 2, "num_classes": 0, "no_embed_class": True,
            **_SWIGLU, "reg_tokens": 8, "dynamic_img_size": True,
        },
    ),
    # Virchow2: the card's embedding is cat(class token, mean of the patch tokens after the 4 registers)
    "virchow2": VisionRecipe("timm", "vit_huge_patch14_224", "https://huggingface.co/paige-ai/Virchow2", _SWIGLU),
    "h-optimus-0": VisionRecipe(
        "timm", "vit_giant_patch14_reg4_dinov2", "https://huggingface.co/bioptimus/H-optimus-0",
        {"init_values": 1e-5, "dynamic_img_size": False},
    ),
    # Prov-GigaPath tile encoder: Resize(256, bicubic) + CenterCrop(224) (crop_pct 0.875), ImageNet mean/std
    "prov-gigapath": VisionRecipe(
        "timm", "vit_giant_patch14_dinov2", "https://huggingface.co/prov-gigapath/prov-gigapath", {}
    ),
    # Phikon-v2: transformers AutoModel (DINOv2 ViT-L), feature = last_hidden_state[:, 0]
    "phikon-v2": VisionRecipe("transformers", "dinov2", "https://huggingface.co/owkin/phikon-v2", {}),
}  # fmt: skip


def has_text_tower(encoder: str | EncoderSpec | Encoder) -> bool:
    """Whether an encoder (loaded, a spec, or a registry name) has a text tower; unknown names count as yes
    (hub ids and folders are open_clip / CLIP formats, which have one)."""
    spec = _spec_of(encoder)
    return True if spec is None else spec.has_text_tower


def require_text_tower(encoder: str | EncoderSpec | Encoder, purpose: str = "this vision-language step") -> None:
    """Raise ImageOnlyEncoderError unless ``encoder`` has a text tower; ``purpose`` names the caller."""
    spec = _spec_of(encoder)
    if spec is None or spec.has_text_tower:
        return
    vl = ", ".join(n for n, s in REGISTRY.items() if s.has_text_tower)
    raise ImageOnlyEncoderError(
        f"encoder '{spec.name}' ({spec.source}) is an image-only encoder (no text tower), so {purpose} cannot "
        f"use it; choose a vision-language encoder ({vl}, an open_clip / Hugging Face CLIP folder or a "
        f"pipeline-trained encoder). '{spec.name}' works for the MIL models (image features only)."
    )


def _spec_of(encoder: str | EncoderSpec | Encoder) -> EncoderSpec | None:
    if isinstance(encoder, EncoderSpec):
        return encoder
    if isinstance(encoder, Encoder):
        return encoder.spec
    return REGISTRY.get(str(encoder).strip().lower())


class Encoder(torch.nn.Module, abc.ABC):
    """A loaded vision-language model and its spec: uint8 patches in, embeddings out, text too."""

    def __init__(self, spec: EncoderSpec, model: torch.nn.Module, logit_scale: float) -> None:
        super().__init__()
        self.spec = spec
        self.model = model
        self.logit_scale = float(logit_scale)
        # (x / 255 - mean) / std as one multiply-add on the device: x * _scale + _shift
        std = torch.tensor(spec.std).view(1, 3, 1, 1)
        self.register_buffer("_scale", 1.0 / (255.0 * std), persistent=False)
        self.register_buffer("_shift", -torch.tensor(spec.mean).view(1, 3, 1, 1) / std, persistent=False)

    @property
    def device(self) -> torch.device:
        return self._scale.device

    def preprocess(self, patches: torch.Tensor) -> torch.Tensor:
        """uint8 (B,H,W,3) or (B,3,H,W) -> normalised float (B,3,S,S) on the encoder's device.

        Patches not already at the input size are resized with :func:`resize_patches` on the CPU (the
        extractor's workers do that step, so the model only converts and normalises, on its device).
        The result is a channels_last view of the HWC pixels, the layout CUDA convolutions prefer.
        """
        if patches.ndim != 4 or 3 not in (patches.shape[1], patches.shape[-1]):
            raise ValueError(f"patches must be (B,H,W,3) or (B,3,H,W) uint8, got shape {tuple(patches.shape)}")
        hwc = patches.permute(0, 2, 3, 1) if patches.shape[1] == 3 else patches
        size = self.spec.input_size
        if tuple(hwc.shape[1:3]) != (size, size):
            hwc = torch.from_numpy(resize_patches(hwc.cpu().numpy(), size))
        if size != self.spec.image_size:  # centre crop, as the card's CenterCrop
            top = (size - self.spec.image_size) // 2
            hwc = hwc[:, top : top + self.spec.image_size, top : top + self.spec.image_size]
        x = hwc.permute(0, 3, 1, 2).to(self._scale.device, non_blocking=True).float()
        return x.mul_(self._scale).add_(self._shift)

    @abc.abstractmethod
    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """(B,3,S,S) preprocessed images -> (B,D) embeddings, L2-normalised iff ``spec.normalized``."""

    @abc.abstractmethod
    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """Prompts -> (T,D) L2-normalised text embeddings."""


class _OpenClipEncoder(Encoder):
    def __init__(self, spec: EncoderSpec, model: torch.nn.Module, tokenizer: Any) -> None:
        super().__init__(spec, model, model.logit_scale.exp().item())
        self.tokenizer = tokenizer

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(images, normalize=self.spec.normalized)

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(list(texts)).to(self.device)
        return self.model.encode_text(tokens, normalize=True)


class _ImageOnlyEncoder(Encoder):
    """An image-only foundation model: encode_text refuses with the message of require_text_tower."""

    def __init__(self, spec: EncoderSpec, model: torch.nn.Module) -> None:
        super().__init__(spec, model, 1.0)

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        require_text_tower(self.spec, "text embedding")
        raise AssertionError("unreachable")  # pragma: no cover


class _TimmVisionEncoder(_ImageOnlyEncoder):
    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        if self.spec.pooling == "cls":
            return self.model(images)  # num_classes=0, global_pool "token": the card's model(x)
        tokens = self.model.forward_features(images)  # (B, prefix + patches, D) after the final norm
        patches = tokens[:, self.model.num_prefix_tokens :]  # class token and registers excluded
        return torch.cat([tokens[:, 0], patches.mean(dim=1)], dim=-1)


class _HFVisionEncoder(_ImageOnlyEncoder):
    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=images).last_hidden_state[:, 0, :]


class _HFClipEncoder(Encoder):
    def __init__(self, spec: EncoderSpec, model: torch.nn.Module, tokenizer: Any) -> None:
        super().__init__(spec, model, model.logit_scale.exp().item())
        self.tokenizer = tokenizer
        self.context_length = int(model.config.text_config.max_position_embeddings)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        # Same maths as CLIPModel.get_image_features, whose return type changed across transformers versions.
        pooled = self.model.vision_model(pixel_values=images).pooler_output
        emb = self.model.visual_projection(pooled)
        return F.normalize(emb, dim=-1) if self.spec.normalized else emb

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        tok = self.tokenizer(
            list(texts), padding="max_length", truncation=True, max_length=self.context_length, return_tensors="pt"
        ).to(self.device)
        pooled = self.model.text_model(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"]).pooler_output
        return F.normalize(self.model.text_projection(pooled), dim=-1)


class _ConchEncoder(Encoder):
    def __init__(self, spec: EncoderSpec, model: torch.nn.Module, tokenizer: Any, tokenize: Any) -> None:
        super().__init__(spec, model, model.logit_scale.exp().item())
        self.tokenizer = tokenizer
        self._tokenize = tokenize

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(images, proj_contrast=True, normalize=self.spec.normalized)

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        tokens = conch_tokens(self.tokenizer, list(texts)).to(self.device)
        return F.normalize(self.model.encode_text(tokens), dim=-1)


def conch_tokens(tokenizer: Any, texts: list[str]) -> torch.Tensor:
    """CONCH's ``tokenize`` (conch.open_clip_custom.custom_tokenizer) without ``batch_encode_plus``, which
    transformers 5 removed: 127 tokens padded to max length, then one <pad> slot that CoCa fills with <cls>."""
    tokens = tokenizer(
        texts,
        max_length=127,
        add_special_tokens=True,
        return_token_type_ids=False,
        truncation=True,
        padding="max_length",
        return_tensors="pt",
    )["input_ids"]
    return F.pad(tokens, (0, 1), value=tokenizer.pad_token_id)


def resize_patch(patch: np.ndarray, size: int, out: np.ndarray | None = None) -> np.ndarray:
    """One uint8 (H,W,3) patch -> (size,size,3): cv2 INTER_AREA when shrinking (exact box average for
    whole factors, no aliasing), bicubic when enlarging; written into ``out`` when given."""
    height, width = patch.shape[:2]
    if (height, width) == (size, size):
        if out is None:
            return patch
        out[...] = patch
        return out
    interpolation = cv2.INTER_AREA if size <= min(height, width) else cv2.INTER_CUBIC
    return cv2.resize(patch, (size, size), dst=out, interpolation=interpolation)


def resize_patches(patches: np.ndarray, size: int) -> np.ndarray:
    """(B,H,W,3) -> (B,size,size,3) with :func:`resize_patch`: the one resize every feature goes through."""
    if tuple(patches.shape[1:3]) == (size, size):
        return patches
    out = np.empty((len(patches), size, size, patches.shape[-1]), dtype=patches.dtype)
    for patch, dst in zip(patches, out):
        resize_patch(patch, size, dst)
    return out


def list_encoders() -> list[EncoderSpec]:
    """The registry entries, in a stable order (for ``slidesnake encoders``)."""
    return list(REGISTRY.values())


def prefetch_command(name: str) -> str:
    """Shell command that fills the Hugging Face cache for ``name`` on a machine with internet."""
    return f"python -c \"from slidesnake.features.encoders import load_encoder; load_encoder('{name}')\""


def load_encoder(name: str, device: str | torch.device = "cpu") -> Encoder:
    """Load an encoder by registry name, ``hf-hub:org/repo`` id, ``MODEL:PRETRAINED`` open_clip pair,
    or local path (an open_clip folder, a ``save_pretrained`` CLIP folder, or a checkpoint file whose
    folder holds ``open_clip_config.json``); returned in eval mode on ``device``."""
    encoder = _load(name.strip())
    return encoder.to(torch.device(device)).eval()


def _load(name: str) -> Encoder:
    spec = REGISTRY.get(name.lower())
    if spec is not None:
        return _load_registered(spec)
    if name.startswith(HF_HUB_PREFIX):
        repo_id = name[len(HF_HUB_PREFIX) :]
        return _load_folder(name, _hub_folder(name, repo_id, None))
    path_text = name[len(LOCAL_DIR_PREFIX) :] if name.startswith(LOCAL_DIR_PREFIX) else name
    path = Path(path_text).expanduser()
    if path.is_dir():
        return _named_by_training(_load_folder(name, path), path)
    if path.is_file():
        return _load_checkpoint_file(name, path)
    arch, sep, pretrained = name.partition(":")
    if sep and pretrained and arch.lower() == "conch":
        return _load_conch(
            replace(REGISTRY["conch"], name=name), lambda: _existing_file(name, Path(pretrained).expanduser())
        )
    if sep and pretrained:
        return _load_open_clip_pair(name, arch, pretrained)
    raise EncoderNotFoundError(
        f"encoder '{name}' is not a registry name ({', '.join(REGISTRY)}), an 'hf-hub:org/repo' id, an open_clip "
        "'MODEL:PRETRAINED' pair, or an existing local path; run `slidesnake encoders` to list the registry"
    )


def _named_by_training(encoder: Encoder, folder: Path) -> Encoder:
    """A pipeline-trained encoder folder (``training.json`` beside the weights) keeps the name it was
    trained under (e.g. ``demo-clip``) as its provenance, not the folder path."""
    record = folder / "training.json"
    if record.is_file():
        try:
            trained_name = json.loads(record.read_text()).get("name")
        except (OSError, ValueError) as exc:
            raise EncoderFormatError(f"encoder '{encoder.spec.name}': {record} is not valid JSON ({exc})") from exc
        if trained_name:
            encoder.spec = replace(encoder.spec, name=str(trained_name), source=str(folder))
    return encoder


def _load_registered(spec: EncoderSpec) -> Encoder:
    if spec.family == "tiny":
        return _build_tiny_clip(spec)
    repo_id = spec.source[len(HF_HUB_PREFIX) :]
    if spec.family == "timm":
        return _load_timm(spec, VISION_RECIPES[spec.name], repo_id)
    if spec.family == "hf_vision":
        return _load_hf_vision(spec, _hub_folder(spec.name, repo_id, "hf_vision"))
    if spec.family == "conch":
        return _load_conch(spec, lambda: _hub_file(spec.name, repo_id, CONCH_WEIGHTS))
    encoder = _load_folder(spec.name, _hub_folder(spec.name, repo_id, spec.family))
    # Keep the registry's name and hub id (not the snapshot path) as the provenance written to outputs.
    encoder.spec = replace(encoder.spec, name=spec.name, source=spec.source)
    return encoder


# ---- Hugging Face cache -------------------------------------------------------------------------


def _hf_cache_dir() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def _hub_file(name: str, repo_id: str, filename: str) -> Path:
    """One file of a hub repo from the HF cache (downloading it when online); a clear error otherwise."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(hf_hub_download(repo_id=repo_id, filename=filename, cache_dir=_hf_cache_dir()))
    except (LocalEntryNotFoundError, EntryNotFoundError, HfHubHTTPError, OSError) as exc:
        offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")
        why = (
            "is not in the Hugging Face cache and HF_HUB_OFFLINE=1 forbids downloading"
            if offline
            else f"could not be fetched ({type(exc).__name__}: {exc})"
        )
        raise EncoderNotFoundError(
            f"encoder '{name}': {repo_id}/{filename} {why} (cache: {_hf_cache_dir()}). Pre-fetch it on a machine "
            f"with internet and the same HF_HOME: {prefetch_command(name)}  (gated repos need `hf auth login` first)"
        ) from exc


def _hub_optional(repo_id: str, filename: str) -> Path | None:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(hf_hub_download(repo_id=repo_id, filename=filename, cache_dir=_hf_cache_dir()))
    except (LocalEntryNotFoundError, EntryNotFoundError, HfHubHTTPError, OSError):
        return None


def _hub_folder(name: str, repo_id: str, family: str | None) -> Path:
    """Snapshot folder of a hub repo holding the config, weights (and tokenizer) that ``family`` needs.

    With ``family`` None the format is detected: an ``open_clip_config.json`` means open_clip,
    otherwise a ``config.json`` means a Hugging Face CLIP folder.
    """
    if family in (None, "open_clip"):
        config = (
            _hub_optional(repo_id, "open_clip_config.json")
            if family is None
            else _hub_file(name, repo_id, "open_clip_config.json")
        )
        if config is not None:
            _hub_first(name, repo_id, OPEN_CLIP_WEIGHTS)
            return config.parent
    config = _hub_file(name, repo_id, "config.json")
    _hub_first(name, repo_id, HF_CLIP_WEIGHTS)
    if family == "hf_vision":
        _hub_optional(repo_id, "preprocessor_config.json")
        return config.parent
    for extra in HF_CLIP_EXTRA:
        _hub_optional(repo_id, extra)
    return config.parent


def _hub_first(name: str, repo_id: str, filenames: tuple[str, ...]) -> Path:
    for filename in filenames[:-1]:
        found = _hub_optional(repo_id, filename)
        if found is not None:
            return found
    return _hub_file(name, repo_id, filenames[-1])


# ---- loaders per format --------------------------------------------------------------------------


def _load_folder(name: str, folder: Path) -> Encoder:
    if (folder / "open_clip_config.json").is_file():
        return _load_open_clip_folder(name, folder)
    if (folder / "config.json").is_file():
        return _load_hf_clip_folder(name, folder)
    raise EncoderFormatError(
        f"encoder '{name}': folder {folder} has neither open_clip_config.json (open_clip format) nor config.json "
        "(Hugging Face CLIP save_pretrained format)"
    )


def _read_open_clip_config(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    try:
        config = json.loads(path.read_text())
        return config["model_cfg"], config.get("preprocess_cfg", {})
    except (OSError, ValueError, KeyError) as exc:
        raise EncoderFormatError(f"{path}: not a valid open_clip config (needs a 'model_cfg' object): {exc}") from exc


def _open_clip_spec(name: str, source: str, family: str, model_cfg: dict, preprocess_cfg: dict) -> EncoderSpec:
    size = model_cfg["vision_cfg"].get("image_size", 224)
    size = size[0] if isinstance(size, (list, tuple)) else size
    return EncoderSpec(
        name=name,
        source=source,
        family=family,
        image_size=int(size),
        mean=tuple(float(v) for v in preprocess_cfg.get("mean", OPENAI_MEAN)),  # type: ignore[arg-type]
        std=tuple(float(v) for v in preprocess_cfg.get("std", OPENAI_STD)),  # type: ignore[arg-type]
        dim=int(model_cfg["embed_dim"]),
        normalized=False,
    )


def _load_open_clip_folder(name: str, folder: Path) -> Encoder:
    import open_clip

    model_cfg, preprocess_cfg = _read_open_clip_config(folder / "open_clip_config.json")
    if not any((folder / w).is_file() for w in OPEN_CLIP_WEIGHTS):
        raise EncoderFormatError(
            f"encoder '{name}': {folder} has an open_clip config but no weights ({' or '.join(OPEN_CLIP_WEIGHTS)})"
        )
    model = open_clip.create_model(f"{LOCAL_DIR_PREFIX}{folder}", device="cpu")
    tokenizer = open_clip.get_tokenizer(f"{LOCAL_DIR_PREFIX}{folder}")
    return _OpenClipEncoder(
        _open_clip_spec(name, str(folder), "open_clip", model_cfg, preprocess_cfg), model, tokenizer
    )


def _existing_file(name: str, path: Path) -> Path:
    if not path.is_file():
        raise EncoderNotFoundError(f"encoder '{name}': checkpoint file {path} does not exist")
    return path


def _load_checkpoint_file(name: str, path: Path) -> Encoder:
    import open_clip

    config_path = path.parent / "open_clip_config.json"
    if not config_path.is_file():
        raise EncoderFormatError(
            f"encoder '{name}': checkpoint file {path} has no open_clip_config.json beside it; name the architecture "
            f"as an open_clip pair instead, e.g. 'ViT-B-32:{path}'"
        )
    model_cfg, preprocess_cfg = _read_open_clip_config(config_path)
    model = open_clip.create_model(f"{LOCAL_DIR_PREFIX}{path.parent}", load_weights=False, device="cpu")
    open_clip.load_checkpoint(model, str(path))
    tokenizer = open_clip.get_tokenizer(f"{LOCAL_DIR_PREFIX}{path.parent}")
    return _OpenClipEncoder(_open_clip_spec(name, str(path), "open_clip", model_cfg, preprocess_cfg), model, tokenizer)


def _load_open_clip_pair(name: str, arch: str, pretrained: str) -> Encoder:
    import open_clip

    model_cfg = open_clip.get_model_config(arch)
    if model_cfg is None:
        raise EncoderNotFoundError(
            f"encoder '{name}': '{arch}' is neither a registry name nor an open_clip architecture "
            f"(see open_clip.list_models()); registry: {', '.join(REGISTRY)}"
        )
    pretrained_path = Path(pretrained).expanduser()
    if not pretrained_path.is_file() and not open_clip.get_pretrained_cfg(arch, pretrained):
        raise EncoderNotFoundError(
            f"encoder '{name}': '{pretrained}' is neither a checkpoint file nor an open_clip pretrained tag of {arch} "
            f"(tags: {', '.join(open_clip.list_pretrained_tags_by_model(arch)) or 'none'})"
        )
    try:
        model = open_clip.create_model(arch, pretrained=pretrained, device="cpu", require_pretrained=True)
    except RuntimeError as exc:
        raise EncoderNotFoundError(
            f"encoder '{name}': weights for {arch}/{pretrained} are not available ({exc}). Pre-fetch them on a machine "
            f"with internet and the same HF_HOME: {prefetch_command(name)}"
        ) from exc
    preprocess_cfg = {"mean": model.visual.image_mean or OPENAI_MEAN, "std": model.visual.image_std or OPENAI_STD}
    spec = _open_clip_spec(name, f"open_clip:{arch}/{pretrained}", "open_clip", model_cfg, preprocess_cfg)
    return _OpenClipEncoder(spec, model, open_clip.get_tokenizer(arch))


def _build_tiny_clip(spec: EncoderSpec) -> Encoder:
    """Random CLIP from a fixed seed: identical weights in every process, the caller's RNG untouched."""
    import open_clip

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_CLIP_SEED)
        model = open_clip.CLIP(**TINY_CLIP_CFG)
    return _OpenClipEncoder(spec, model, open_clip.get_tokenizer("ViT-B-32"))


def _resolve_dotted(value: Any) -> Any:
    """'timm.layers.SwiGLUPacked' -> the class (recipe kwargs name layer classes as strings)."""
    if isinstance(value, str) and value.startswith(("timm.", "torch.")):
        import importlib

        module, _, attr = value.rpartition(".")
        return getattr(importlib.import_module(module), attr)
    return value


def _load_timm(spec: EncoderSpec, recipe: VisionRecipe, repo_id: str) -> Encoder:
    """timm.create_model('hf-hub:<id>', pretrained=True, **card kwargs): the card's own call. Offline it
    reads the HF cache; the config and weights are looked up first so a missing file is a clear error."""
    try:
        import timm
    except ImportError as exc:
        raise EncoderDependencyError(f"encoder '{spec.name}' needs the package 'timm': pip install timm") from exc
    _hub_file(spec.name, repo_id, "config.json")
    _hub_first(spec.name, repo_id, HF_CLIP_WEIGHTS)
    kwargs = {k: _resolve_dotted(v) for k, v in recipe.kwargs.items()}
    kwargs.setdefault("num_classes", 0)
    model = timm.create_model(f"{HF_HUB_PREFIX}{repo_id}", pretrained=True, **kwargs)
    dim = int(model.num_features) * (2 if spec.pooling == "cls+mean_patch" else 1)
    return _TimmVisionEncoder(_checked_dim(spec, dim), model)


def _checked_dim(spec: EncoderSpec, dim: int) -> EncoderSpec:
    """The spec with the dim the loaded weights give (a checkpoint of another width is named in the log)."""
    if dim != spec.dim:
        log.warning(
            "encoder '%s': the loaded model gives %d-dim features, the registry says %d", spec.name, dim, spec.dim
        )
    return replace(spec, dim=dim)


def _load_hf_vision(spec: EncoderSpec, folder: Path) -> Encoder:
    """transformers AutoModel.from_pretrained on the hub snapshot folder (what the id resolves to)."""
    try:
        from transformers import AutoModel
    except ImportError as exc:
        raise EncoderDependencyError(
            f"encoder '{spec.name}' needs the package 'transformers': pip install transformers"
        ) from exc
    model = AutoModel.from_pretrained(folder, local_files_only=True)
    return _HFVisionEncoder(_checked_dim(spec, int(model.config.hidden_size)), model)


def _load_hf_clip_folder(name: str, folder: Path) -> Encoder:
    try:
        from transformers import AutoTokenizer, CLIPModel
    except ImportError as exc:
        raise EncoderDependencyError(
            f"encoder '{name}' is a Hugging Face CLIP model and needs the package 'transformers': pip install transformers"
        ) from exc
    config = json.loads((folder / "config.json").read_text())
    if config.get("model_type") != "clip":
        raise EncoderFormatError(
            f"encoder '{name}': {folder / 'config.json'} has model_type {config.get('model_type')!r}; only 'clip' "
            "(CLIPModel.save_pretrained) folders are supported"
        )
    model = CLIPModel.from_pretrained(folder, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    mean, std = OPENAI_MEAN, OPENAI_STD
    preprocessor = folder / "preprocessor_config.json"
    if preprocessor.is_file():
        pre = json.loads(preprocessor.read_text())
        mean = tuple(pre.get("image_mean", mean))  # type: ignore[assignment]
        std = tuple(pre.get("image_std", std))  # type: ignore[assignment]
    spec = EncoderSpec(
        name=name,
        source=str(folder),
        family="hf_clip",
        image_size=int(model.config.vision_config.image_size),
        mean=mean,
        std=std,
        dim=int(model.config.projection_dim),
        normalized=False,
    )
    return _HFClipEncoder(spec, model, tokenizer)


def _load_conch(spec: EncoderSpec, checkpoint_fn: Callable[[], Path]) -> Encoder:
    """CONCH through its own package; the package is checked before any weights are looked up."""
    try:
        from conch.open_clip_custom import create_model_from_pretrained, get_tokenizer, tokenize
    except ImportError as exc:
        raise EncoderDependencyError(
            f"encoder '{spec.name}' needs the optional package 'conch' (CONCH), which is not installed: {CONCH_PACKAGE_HINT}"
        ) from exc
    checkpoint = checkpoint_fn()
    model, _ = create_model_from_pretrained("conch_ViT-B-16", checkpoint_path=str(checkpoint), device="cpu")
    return _ConchEncoder(replace(spec, source=str(checkpoint)), model, get_tokenizer(), tokenize)
