"""Encoder registry: one interface over open_clip, Hugging Face CLIP and CONCH vision-language models.

Each entry knows its source, input size, mean/std, embedding dim and whether image embeddings come out
L2-normalised, and one loaded :class:`Encoder` serves both towers (image and text). Hub ids resolve
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

log = logging.getLogger(__name__)

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
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


class EncoderNotFoundError(Exception):
    """The name is not a registry entry, a cached/downloadable hub id, or a readable local path."""


class EncoderDependencyError(ImportError):
    """The encoder needs an optional package that is not installed; the message names it."""


class EncoderFormatError(Exception):
    """A local folder or file exists but is not a format any loader recognises."""


@dataclass(frozen=True)
class EncoderSpec:
    """What a pipeline needs to know about an encoder without loading it."""

    name: str
    source: str
    family: str  # "open_clip" | "hf_clip" | "conch" | "tiny"
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    dim: int
    normalized: bool
    projected: bool = True  # image features are the joint image-text space embedding (what zero-shot needs)


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

        Patches not already at the input size S are resized with :func:`resize_patches` on the CPU (the
        extractor's workers do that step, so the model only converts and normalises, on its device).
        The result is a channels_last view of the HWC pixels, the layout CUDA convolutions prefer.
        """
        if patches.ndim != 4 or 3 not in (patches.shape[1], patches.shape[-1]):
            raise ValueError(f"patches must be (B,H,W,3) or (B,3,H,W) uint8, got shape {tuple(patches.shape)}")
        hwc = patches.permute(0, 2, 3, 1) if patches.shape[1] == 3 else patches
        size = self.spec.image_size
        if tuple(hwc.shape[1:3]) != (size, size):
            hwc = torch.from_numpy(resize_patches(hwc.cpu().numpy(), size))
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
