"""Contrastive image-text training: the symmetric CLIP loss, the many-to-many MIL-NCE loss, and one loop.

The loop is shared by every pair source: the demo VLM's caption corpus (demo-clip pretraining),
prompt-bag alignment (CPLIP-style, slidesnake/models/vl/cplip.py) and clinical-text tuning (HLIP).
A caller gives the module, a function that turns one batch into a loss, a batch iterator per epoch
and (optionally) a validation loss; the loop handles the optimiser (AdamW, warmup + cosine decay),
mixed precision and channels_last on CUDA (full fp32 on the CPU, so CPU runs are exact), early
stopping on the validation loss with the best state restored, and a wall-clock budget.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from slidesnake.device import autocast_dtype

log = logging.getLogger(__name__)


def clip_loss(image: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor | float) -> torch.Tensor:
    """Symmetric InfoNCE of CLIP: row i of ``image`` and ``text`` is a positive pair, all others negatives.

    Inputs are L2-normalised here; ``logit_scale`` is the multiplier (already exponentiated).
    """
    image, text = F.normalize(image, dim=-1), F.normalize(text, dim=-1)
    logits = logit_scale * image @ text.T
    target = torch.arange(len(image), device=image.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def milnce_loss(image: torch.Tensor, text: torch.Tensor, positives: torch.Tensor, tau: float) -> torch.Tensor:
    """Many-to-many MIL-NCE (Miech et al. 2020) in both directions.

    ``positives`` (B_img, B_txt) bool marks the texts of each image's bag (and, read by column, the
    images of each text's bag). Per image: −log(Σ_pos e^{s/τ} / Σ_all e^{s/τ}); per text the same over
    images; the two directions are averaged. Rows or columns without a positive are left out.
    """
    if positives.shape != (len(image), len(text)):
        raise ValueError(f"positives must be ({len(image)}, {len(text)}), got {tuple(positives.shape)}")
    sim = F.normalize(image, dim=-1) @ F.normalize(text, dim=-1).T / tau
    masked = sim.masked_fill(~positives, float("-inf"))
    terms = []
    for dim in (1, 0):
        has = positives.any(dim=dim)
        if has.any():
            nce = torch.logsumexp(sim, dim=dim) - torch.logsumexp(masked, dim=dim)
            terms.append(nce[has].mean())
    if not terms:
        raise ValueError("milnce_loss: no image has a positive text")
    return torch.stack(terms).mean()


@dataclass(frozen=True)
class ContrastiveParams:
    """Optimisation settings of one contrastive run (recorded in training.json)."""

    epochs: int = 20
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup_fraction: float = 0.05
    patience: int = 5
    max_seconds: float | None = None
    seed: int = 0
    device: str = "cpu"


def seed_all(seed: int) -> None:
    torch.manual_seed(seed)


def fit_contrastive(
    model: torch.nn.Module,
    parameters: Iterable[torch.nn.Parameter],
    batch_loss: Callable[[Any], torch.Tensor],
    train_batches: Callable[[int], Iterable[Any]],
    steps_per_epoch: int,
    params: ContrastiveParams,
    val_loss: Callable[[], float] | None = None,
) -> list[dict[str, float]]:
    """Train ``parameters`` of ``model`` and restore the best-validation state; returns the history.

    ``train_batches(epoch)`` yields batches, ``batch_loss(batch)`` returns a scalar loss (called under
    autocast on CUDA), ``val_loss()`` the validation loss (under no_grad, model in eval mode). Without
    a validation loss the last epoch is kept. Stops early after ``params.patience`` epochs without
    improvement, or when ``params.max_seconds`` of training have passed (after a whole epoch).
    """
    device = torch.device(params.device)
    trainable = [p for p in parameters if p.requires_grad]
    if not trainable:
        raise ValueError("fit_contrastive: no trainable parameters")
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(trainable, lr=params.lr, weight_decay=params.weight_decay)
    total = max(1, params.epochs * steps_per_epoch)
    warmup = max(1, int(params.warmup_fraction * total))

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    dtype = autocast_dtype(device)
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    history: list[dict[str, float]] = []
    best, best_state, best_epoch, stale = math.inf, None, -1, 0
    start = time.monotonic()
    for epoch in range(params.epochs):
        model.train()
        losses = []
        for batch in train_batches(epoch):
            with torch.autocast(device_type=device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                loss = batch_loss(batch)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            losses.append(float(loss.detach()))
        row = {
            "epoch": epoch,
            "train_loss": float(sum(losses) / max(1, len(losses))),
            "seconds": time.monotonic() - start,
        }
        if val_loss is not None:
            model.eval()
            with (
                torch.no_grad(),
                torch.autocast(device_type=device.type, dtype=dtype or torch.float32, enabled=dtype is not None),
            ):
                row["val_loss"] = float(val_loss())
        history.append(row)
        log.info("epoch %d: %s", epoch, ", ".join(f"{k} {v:.4f}" for k, v in row.items() if k != "epoch"))
        current = row.get("val_loss", -epoch)
        if current < best:
            best, best_epoch, stale = current, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            stale += 1
            if stale >= params.patience:
                log.info("early stop at epoch %d (best epoch %d)", epoch, best_epoch)
                break
        if params.max_seconds is not None and time.monotonic() - start > params.max_seconds:
            log.info("time budget of %.0f s reached after epoch %d", params.max_seconds, epoch)
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    for row in history:
        row["best"] = float(row["epoch"] == best_epoch)
    return history


def params_record(params: ContrastiveParams) -> dict[str, Any]:
    return asdict(params)


# ------------------------------------------------------------------------------- pipeline-trained encoders

# demo-clip: a small open_clip CLIP (ViT image tower, causal text transformer) that pretrains on the
# synthetic caption corpus in about two minutes on 2 CPU cores; 64-px inputs like tiny-clip.
DEMO_CLIP_CFG: dict[str, Any] = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 64, "patch_size": 8, "width": 96, "layers": 3, "head_width": 32, "mlp_ratio": 2.0},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 96, "heads": 4, "layers": 3, "mlp_ratio": 2.0},
}
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def save_open_clip_folder(
    model: torch.nn.Module, model_cfg: dict[str, Any], folder: str, training: dict[str, Any]
) -> None:
    """Write an open_clip folder (``open_clip_config.json``, ``open_clip_model.safetensors``) and
    ``training.json``, each atomically; ``load_encoder(folder)`` reads it like a pre-fetched QuiltNet."""
    import safetensors.torch

    from slidesnake.io.atomic import atomic_path, write_json

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(out / "open_clip_model.safetensors") as tmp:
        safetensors.torch.save_file(state, str(tmp))
    write_json(
        out / "open_clip_config.json",
        {"model_cfg": model_cfg, "preprocess_cfg": {"mean": list(OPENAI_MEAN), "std": list(OPENAI_STD)}},
    )
    write_json(out / "training.json", training)


def _augment(tiles: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random flips and 90° rotations of a uint8 (B,H,W,3) batch (histology has no up or left)."""
    k = int(torch.randint(4, (1,), generator=generator))
    tiles = torch.rot90(tiles, k, dims=(1, 2))
    if bool(torch.randint(2, (1,), generator=generator)):
        tiles = tiles.flip(2)
    return tiles


def _preprocess(tiles: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 (B,H,W,3) -> normalised float (B,3,H,W) on ``device`` (channels_last there)."""
    mean = torch.tensor(OPENAI_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_STD, device=device).view(1, 3, 1, 1)
    x = tiles.to(device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255)
    x = (x - mean) / std
    return x.contiguous(memory_format=torch.channels_last) if device.type == "cuda" else x


def pretrain_clip(
    train_h5: str,
    val_h5: str,
    out_dir: str,
    *,
    name: str = "demo-clip",
    model_cfg: dict[str, Any] | None = None,
    batch_size: int = 128,
    params: ContrastiveParams | None = None,
    threads: int | None = None,
) -> list[dict[str, float]]:
    """Pretrain an open_clip CLIP from scratch on a caption corpus (slidesnake/data/captions_corpus.py)
    with the symmetric CLIP loss; write it as an open_clip folder with ``training.json``."""
    import open_clip

    from slidesnake.data.captions_corpus import read_corpus
    from slidesnake.device import select_device

    params = params or ContrastiveParams(epochs=12, lr=2e-3, weight_decay=0.1, patience=4, max_seconds=150)
    model_cfg = copy.deepcopy(model_cfg or DEMO_CLIP_CFG)
    if threads:
        torch.set_num_threads(threads)
    device = select_device(params.device)
    params = ContrastiveParams(**{**asdict(params), "device": str(device)})
    seed_all(params.seed)
    model = open_clip.CLIP(**model_cfg).to(device)
    tokenizer = open_clip.get_tokenizer("ViT-B-32", context_length=model_cfg["text_cfg"]["context_length"])
    train, val = read_corpus(train_h5), read_corpus(val_h5)
    tiles = torch.from_numpy(train["tiles"])
    n, n_caps = train["captions"].shape
    tokens = tokenizer([c for row in train["captions"] for c in row]).view(n, n_caps, -1)
    val_tiles = torch.from_numpy(val["tiles"])
    val_tokens = tokenizer(list(val["captions"][:, 0]))
    generator = torch.Generator().manual_seed(params.seed)
    steps = max(1, n // batch_size)

    def batches(epoch: int):
        order = torch.randperm(n, generator=generator)
        for i in range(steps):
            idx = order[i * batch_size : (i + 1) * batch_size]
            pick = torch.randint(n_caps, (len(idx),), generator=generator)
            yield _augment(tiles[idx], generator), tokens[idx, pick]

    def batch_loss(batch) -> torch.Tensor:
        images, text = batch
        image_features, text_features, logit_scale = model(_preprocess(images, device), text.to(device))[:3]
        return clip_loss(image_features, text_features, logit_scale)

    def validation() -> float:
        losses = []
        for i in range(0, len(val_tiles) - batch_size + 1, batch_size):
            images = _preprocess(val_tiles[i : i + batch_size], device)
            image_features, text_features, logit_scale = model(images, val_tokens[i : i + batch_size].to(device))[:3]
            losses.append(float(clip_loss(image_features, text_features, logit_scale)))
        return sum(losses) / max(1, len(losses))

    start = time.monotonic()
    history = fit_contrastive(model, model.parameters(), batch_loss, batches, steps, params, validation)
    seconds = time.monotonic() - start
    kinds = sorted(set(train["kind"]))
    save_open_clip_folder(
        model.cpu(),
        model_cfg,
        out_dir,
        {
            "name": name,
            "objective": "clip",
            "corpus": {"train": str(train_h5), "val": str(val_h5), "tiles": int(n), "kinds": kinds},
            "batch_size": batch_size,
            "params": params_record(params),
            "seconds": seconds,
            "history": history,
        },
    )
    log.info("%s: pretrained in %.0f s on %d tiles (%d kinds) -> %s", name, seconds, n, len(kinds), out_dir)
    return history


def read_slide_tiles(
    slide: str, coords: np.ndarray, mag: float, size: int, fallback_mpp: float | None = None
) -> np.ndarray:
    """uint8 (N, size, size, 3) patches of one slide at ``mag`` (level-0 coords), resized as the extractor does."""
    from slidesnake.features.encoders import resize_patches
    from slidesnake.io.slide import open_slide, read_patch, read_plan, slide_info

    handle = open_slide(slide)
    try:
        plan = read_plan(slide_info(handle, fallback_mpp), mag)
        patches = np.stack([read_patch(handle, int(x), int(y), plan) for x, y in coords])
    finally:
        handle.close()
    return resize_patches(patches, size)


def align_prompt_bags(
    base: str,
    bags: dict[str, list[str]],
    slides: dict[str, tuple[str, np.ndarray]],
    labels: dict[str, int],
    split: dict[str, str],
    classes: list[str],
    out_dir: str,
    *,
    name: str,
    magnification: int = 20,
    tiles_per_slide: int = 64,
    texts_per_class: int = 8,
    tau: float = 0.07,
    tune: str = "projection",
    image_bag: str = "retrieved",
    candidates_per_slide: int = 512,
    params: ContrastiveParams | None = None,
    fallback_mpp: float | None = None,
) -> list[dict[str, float]]:
    """CPLIP-style MIL-NCE alignment of an open_clip encoder (``base``) with a prompt dictionary.

    ``slides``: slide_id -> (slide file, coords at ``magnification``); ``split``: slide_id -> train/val/test
    (only train slides are trained on; val gives early stopping; test is never read). Each slide's image
    bag is ``image_bag`` (slidesnake/models/vl/cplip.py): its ``tiles_per_slide`` patches most similar to
    its class under the untuned base (of ``candidates_per_slide`` random ones), or a random sample.
    Writes the aligned encoder as an open_clip folder (``training.json`` names it ``name``).
    """
    from slidesnake.device import select_device
    from slidesnake.features.encoders import load_encoder
    from slidesnake.models.vl.cplip import (
        IMAGE_BAGS,
        class_directions,
        positive_mask,
        retrieve_bag,
        text_bag,
        trainable_parameters,
    )

    if image_bag not in IMAGE_BAGS:
        raise ValueError(f"vl.cplip.image_bag is {image_bag!r}; one of {IMAGE_BAGS}")

    params = params or ContrastiveParams(epochs=30, lr=1e-3, weight_decay=0.0, patience=5)
    device = select_device(params.device)
    params = ContrastiveParams(**{**asdict(params), "device": str(device)})
    seed_all(params.seed)
    encoder = load_encoder(base, device)
    model = encoder.model
    trainable = trainable_parameters(model, tune)
    rng = np.random.default_rng(params.seed)
    image_size = encoder.spec.image_size
    tokens_of = encoder.tokenizer
    all_texts = [t for c in classes for t in bags[c]]
    all_class = np.array([k for k, c in enumerate(classes) for _ in bags[c]])
    directions = None
    if image_bag == "retrieved":
        model.eval()
        with torch.no_grad():
            text = model.encode_text(tokens_of(all_texts).to(device)).float().cpu().numpy()
        directions = class_directions(text, all_class, len(classes))
    tiles, targets = {}, {}
    started = time.monotonic()
    for part in ("train", "val"):
        chosen = [s for s in slides if split.get(s) == part and len(slides[s][1])]
        if part == "train" and not chosen:
            raise ValueError("CPLIP alignment: no training slide with patches in this fold")
        images, image_class = [], []
        for slide_id in chosen:
            path, coords = slides[slide_id]
            n_read = tiles_per_slide if directions is None else max(tiles_per_slide, candidates_per_slide)
            pick = np.sort(rng.choice(len(coords), size=min(n_read, len(coords)), replace=False))
            pixels = read_slide_tiles(path, coords[pick], magnification, image_size)
            if directions is not None:
                with torch.no_grad():
                    embedded = [
                        model.encode_image(encoder.preprocess(torch.from_numpy(pixels[i : i + 256]))).float().cpu()
                        for i in range(0, len(pixels), 256)
                    ]
                pixels = pixels[
                    retrieve_bag(torch.cat(embedded).numpy(), directions[labels[slide_id]], tiles_per_slide)
                ]
            images.append(torch.from_numpy(pixels))
            image_class.append(torch.full((len(pixels),), labels[slide_id]))
        tiles[part] = torch.cat(images) if images else torch.zeros((0, image_size, image_size, 3), torch.uint8)
        targets[part] = torch.cat(image_class) if image_class else torch.zeros(0, dtype=torch.long)
    log.info(
        "CPLIP image bags (%s): %d train / %d val tiles from %d slides in %.0f s",
        image_bag,
        len(tiles["train"]),
        len(tiles["val"]),
        sum(split.get(s) in ("train", "val") for s in slides),
        time.monotonic() - started,
    )
    generator = torch.Generator().manual_seed(params.seed)
    batch = 256

    def step_loss(images: torch.Tensor, image_class: torch.Tensor, texts, text_class) -> torch.Tensor:
        image = model.encode_image(encoder.preprocess(images))
        text = model.encode_text(tokens_of(texts).to(device))
        return milnce_loss(image, text, positive_mask(image_class.to(device), text_class.to(device)), tau)

    def batches(epoch: int):
        order = torch.randperm(len(tiles["train"]), generator=generator)
        for i in range(0, len(order), batch):
            idx = order[i : i + batch]
            texts, text_class = text_bag(bags, classes, texts_per_class, rng)
            yield _augment(tiles["train"][idx], generator), targets["train"][idx], texts, torch.from_numpy(text_class)

    val_texts, val_class = all_texts, torch.from_numpy(all_class)

    def validation() -> float:
        losses = [
            float(step_loss(tiles["val"][i : i + batch], targets["val"][i : i + batch], val_texts, val_class))
            for i in range(0, len(tiles["val"]), batch)
        ]
        return sum(losses) / len(losses)

    start = time.monotonic()
    history = fit_contrastive(
        model,
        trainable,
        lambda b: step_loss(*b),
        batches,
        max(1, -(-len(tiles["train"]) // batch)),
        params,
        validation if len(tiles["val"]) else None,
    )
    with open(Path(base) / "open_clip_config.json", encoding="utf-8") as fh:
        model_cfg = json.load(fh)["model_cfg"]
    save_open_clip_folder(
        model.cpu(),
        model_cfg,
        out_dir,
        {
            "name": name,
            "objective": "milnce",
            "base": base,
            "tune": tune,
            "tau": tau,
            "image_bag": image_bag,
            "candidates_per_slide": candidates_per_slide if image_bag == "retrieved" else None,
            "tiles_per_slide": tiles_per_slide,
            "texts_per_class": texts_per_class,
            "magnification": magnification,
            "train_slides": sorted(s for s in slides if split.get(s) == "train"),
            "val_slides": sorted(s for s in slides if split.get(s) == "val"),
            "params": params_record(params),
            "seconds": time.monotonic() - start,
            "history": history,
        },
    )
    return history


def align_prompt_bags_files(
    base: str,
    dictionary_json: str,
    task: tuple[str, dict[str, Any]],
    sheet_tsv: str,
    coords_files: list[str],
    slide_files: list[str],
    folds_csv: str,
    out_dir: str,
    cplip: dict[str, Any],
    *,
    name: str,
    clinical: str | None = None,
    mutations: str | None = None,
    fallback_mpp: float | None = None,
) -> list[dict[str, float]]:
    """:func:`align_prompt_bags` from the pipeline's files: the prompt dictionary, the task (config
    name and entry) and its tables, coords h5 and slide files (zipped, coords named ``{slide_id}.h5``),
    the folds, and the ``vl.cplip`` settings (fold, magnification, bag sizes, tau, tune, optimisation)."""
    import h5py

    from slidesnake.models.vl.prompts import read_prompt_dictionary
    from slidesnake.tasks import class_names, load_task_labels

    task_obj, labels = load_task_labels(task[0], task[1], sheet_tsv, clinical=clinical, mutations=mutations)
    classes = class_names(task_obj, labels)
    known = set(labels["slide_id"])
    slides = {}
    for coords_h5, slide in zip(coords_files, slide_files, strict=True):
        slide_id = Path(coords_h5).stem
        if slide_id in known:
            with h5py.File(coords_h5, "r") as f:
                slides[slide_id] = (slide, f["coords"][()].reshape(-1, 2))
    return align_prompt_bags(
        base,
        read_prompt_dictionary(dictionary_json, classes),
        slides,
        dict(zip(labels["slide_id"], labels["target"])),
        read_fold(folds_csv, cplip["fold"], key="vl.cplip.fold"),
        classes,
        out_dir,
        name=name,
        magnification=cplip["magnification"],
        tiles_per_slide=cplip["tiles_per_slide"],
        texts_per_class=cplip["texts_per_class"],
        tau=cplip["tau"],
        tune=cplip["tune"],
        image_bag=cplip["image_bag"],
        candidates_per_slide=cplip["candidates_per_slide"],
        params=ContrastiveParams(
            epochs=cplip["epochs"],
            lr=cplip["lr"],
            weight_decay=0.0,
            patience=cplip["patience"],
            seed=cplip["seed"],
            device=cplip["device"],
        ),
        fallback_mpp=fallback_mpp,
    )


# ------------------------------------------------------------------- HLIP: clinical-text tuning (issue 14)


class HlipError(ValueError):
    """HLIP tuning inputs that cannot give a single training pair (config key ``vl.hlip``)."""


def grouped_clip_loss(
    image: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor | float, groups: torch.Tensor
) -> torch.Tensor:
    """Symmetric CLIP loss for pairs that share texts: row i's positives are every row of its group.

    HLIP pairs many tiles of a case with the case's one paragraph, so a batch holds the same caption
    several times; plain CLIP would push a tile away from its own caption's copies. The targets are
    uniform over the group (soft cross-entropy), which is exactly :func:`clip_loss` when every group
    has one row.
    """
    image, text = F.normalize(image, dim=-1), F.normalize(text, dim=-1)
    logits = logit_scale * image @ text.T
    same = (groups[:, None] == groups[None, :]).to(logits.dtype)
    target = same / same.sum(dim=1, keepdim=True)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


class ClipTowers:
    """The image and text towers of a loaded open_clip or Hugging Face CLIP encoder, for training.

    ``tokenize`` turns texts into the tower's token tensors once (so a training step only indexes
    them), ``text`` and ``image`` return unnormalised projected embeddings, ``logit_scale`` the
    (exponentiated, trainable) temperature.
    """

    def __init__(self, encoder: Any) -> None:
        self.encoder = encoder
        self.model = encoder.model
        self.family = "hf_clip" if hasattr(self.model, "text_model") else "open_clip"
        if self.family == "open_clip" and not hasattr(self.model, "encode_text"):
            raise HlipError(f"encoder '{encoder.spec.name}' has no text tower to tune")
        if encoder.spec.family == "conch":
            raise HlipError(
                f"encoder '{encoder.spec.name}': CONCH tuning is not supported (use an open_clip or HF CLIP)"
            )

    @property
    def tokenizer(self) -> Any:
        return self.encoder.tokenizer

    @property
    def context_length(self) -> int:
        if self.family == "hf_clip":
            return int(self.model.config.text_config.max_position_embeddings)
        return int(getattr(self.tokenizer, "context_length", 77))

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        if self.family == "hf_clip":
            tok = self.tokenizer(
                list(texts), padding="max_length", truncation=True, max_length=self.context_length, return_tensors="pt"
            )
            return {"input_ids": tok["input_ids"], "attention_mask": tok["attention_mask"]}
        return {"input_ids": self.tokenizer(list(texts))}

    def text(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.family == "hf_clip":
            pooled = self.model.text_model(
                input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]
            ).pooler_output
            return self.model.text_projection(pooled)
        return self.model.encode_text(tokens["input_ids"])

    def image(self, images: torch.Tensor) -> torch.Tensor:
        if self.family == "hf_clip":
            return self.model.visual_projection(self.model.vision_model(pixel_values=images).pooler_output)
        return self.model.encode_image(images)

    def logit_scale(self) -> torch.Tensor:
        return self.model.logit_scale.exp().clamp(max=100.0)


class TilePairs(torch.utils.data.Dataset):
    """(tile, case) pairs read from tiles h5 files (slidesnake/features/tiles.py) a batch at a time.

    An item is a list of pair indices (a batch sampler feeds it), so a batch opens each of its files
    once and reads one chunk per tile (read_rows); tiles are resized to the encoder's input size and, when
    ``augment``, flipped and rotated by 90° (histology has no up or left). h5 handles open lazily in
    each loader process.
    """

    def __init__(
        self, items: list[tuple[str, int, int]], image_size: int, augment: bool = False, seed: int = 0
    ) -> None:
        self.files = sorted({f for f, _, _ in items})
        file_id = {f: i for i, f in enumerate(self.files)}
        self.file = torch.tensor([file_id[f] for f, _, _ in items], dtype=torch.int64)
        self.row = torch.tensor([r for _, r, _ in items], dtype=torch.int64)
        self.group = torch.tensor([g for _, _, g in items], dtype=torch.int64)
        self.image_size = int(image_size)
        self.augment = augment
        self.seed = seed
        self._handles: dict[int, Any] = {}
        self._pid = -1

    def __len__(self) -> int:
        return len(self.row)

    def _h5(self, i: int) -> Any:
        import os

        import h5py

        if self._pid != os.getpid():
            self._handles, self._pid = {}, os.getpid()
        if i not in self._handles:
            self._handles[i] = h5py.File(self.files[i], "r")
        return self._handles[i]

    def __getitem__(self, batch: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        import numpy as np

        from slidesnake.features.encoders import resize_patches
        from slidesnake.features.tiles import read_rows

        batch_t = torch.as_tensor(batch, dtype=torch.int64)
        out = np.empty((len(batch_t), self.image_size, self.image_size, 3), np.uint8)
        files = self.file[batch_t]
        for file_index in files.unique().tolist():
            where = (files == file_index).nonzero().flatten()
            rows = self.row[batch_t[where]].numpy()
            out[where.numpy()] = resize_patches(read_rows(self._h5(file_index)["tiles"], rows), self.image_size)
        tiles_t = torch.from_numpy(out)
        if self.augment:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + int(batch_t[0]))
            tiles_t = _augment(tiles_t, generator)
        return tiles_t, self.group[batch_t]


def pair_items(
    tiles: dict[str, str], slide_cases: dict[str, str], case_index: dict[str, int], max_per_slide: int | None = None
) -> list[tuple[str, int, int]]:
    """(tiles file, row, caption index) of every usable tile of the given slides.

    A slide whose case has no caption, or whose tiles file holds zero tiles, is logged by name and
    left out (the cohort goes on).
    """
    from slidesnake.features.tiles import tile_count

    items, empty, uncaptioned = [], [], []
    for slide_id in sorted(tiles):
        case_id = slide_cases.get(slide_id)
        if case_id not in case_index:
            uncaptioned.append(slide_id)
            continue
        n = tile_count(tiles[slide_id])
        if n == 0:
            empty.append(slide_id)
            continue
        rows = range(n if max_per_slide is None else min(n, max_per_slide))
        items.extend((tiles[slide_id], r, case_index[case_id]) for r in rows)
    if empty:
        log.warning("%d slide(s) have zero tiles and give no pairs: %s", len(empty), ", ".join(empty))
    if uncaptioned:
        log.warning(
            "%d slide(s) have no clinical caption and give no pairs: %s", len(uncaptioned), ", ".join(uncaptioned)
        )
    return items


def pair_loader(
    dataset: TilePairs, batch_size: int, shuffle: bool, seed: int, num_workers: int = 0
) -> torch.utils.data.DataLoader:
    """Batches of pairs from ``dataset``: shuffled with a fixed-seed generator, or in order."""
    sampler: torch.utils.data.Sampler
    if shuffle:
        sampler = torch.utils.data.RandomSampler(dataset, generator=torch.Generator().manual_seed(seed))
    else:
        sampler = torch.utils.data.SequentialSampler(dataset)
    batches = torch.utils.data.BatchSampler(sampler, batch_size, drop_last=shuffle and len(dataset) >= batch_size)
    return torch.utils.data.DataLoader(
        dataset,
        sampler=batches,
        batch_size=None,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        pin_memory=torch.cuda.is_available(),
    )


@dataclass(frozen=True)
class CaptionViews:
    """The texts each case can show in a tuning batch, as indices into one tokenised text pool whose
    first C entries are the cases' paragraphs (case i's paragraph is pool entry i).

    A case shows its paragraph, or (with probability ``sentence_prob``) one of its single-field
    sentences drawn uniformly: ConVIRT's sentence sampling. Retrieval queries one field at a time
    ("The tumour is stage IV."); a text tower tuned only on whole paragraphs never reads a lone
    sentence out and embeds it arbitrarily (on the demo, stage votes came out inverted).
    """

    sentences: torch.Tensor  # (C, S) pool indices of each case's sentences, padded with 0
    n_sentences: torch.Tensor  # (C,)
    sentence_prob: float = 0.0

    @classmethod
    def build(
        cls, paragraphs: list[str], sentences: list[list[str]] | None, sentence_prob: float
    ) -> tuple[CaptionViews, list[str]]:
        """Views of C cases and the text pool (paragraphs first, then each distinct sentence once)."""
        if not 0.0 <= sentence_prob <= 1.0:
            raise HlipError(f"vl.hlip.sentence_prob must lie in [0, 1], got {sentence_prob}")
        pool = list(paragraphs)
        index = {}
        rows = []
        for case_sentences in sentences or [[] for _ in paragraphs]:
            row = []
            for text in case_sentences:
                if text not in index:
                    index[text] = len(pool)
                    pool.append(text)
                row.append(index[text])
            rows.append(row)
        width = max(1, max(map(len, rows), default=0))
        padded = torch.zeros((len(paragraphs), width), dtype=torch.int64)
        for i, row in enumerate(rows):
            padded[i, : len(row)] = torch.tensor(row, dtype=torch.int64)
        counts = torch.tensor([len(r) for r in rows], dtype=torch.int64)
        return cls(padded, counts, float(sentence_prob)), pool

    def pick(self, cases: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Pool index of the text each of ``cases`` shows in this batch (its paragraph at prob 0)."""
        out = cases.clone()
        if self.sentence_prob > 0:
            n = self.n_sentences[cases]
            use = (torch.rand(len(cases), generator=generator) < self.sentence_prob) & (n > 0)
            j = (torch.rand(len(cases), generator=generator) * n.clamp(min=1)).long()
            out[use] = self.sentences[cases, j][use]
        return out


def hlip_step_loss(
    towers: ClipTowers,
    tokens: dict[str, torch.Tensor],
    batch: Any,
    device: torch.device,
    views: CaptionViews | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The grouped CLIP loss of one (tiles, case index) batch; each distinct text is encoded once.

    With ``views``, each case in the batch shows one of its texts (:class:`CaptionViews`) and rows
    showing the same text are one group, so two cases that share a sentence ("The tumour is stage
    IV.") are each other's positives, never negatives. Without, the pool is the paragraphs.
    """
    images, cases = batch
    if views is None:
        texts = cases
    else:
        unique_cases, case_inverse = torch.unique(cases, return_inverse=True)
        texts = views.pick(unique_cases, generator)[case_inverse]
    unique, inverse = torch.unique(texts, return_inverse=True)
    text = towers.text({k: v[unique].to(device) for k, v in tokens.items()})[inverse.to(device)]
    image = towers.image(towers.encoder.preprocess(images))
    return grouped_clip_loss(image, text, towers.logit_scale(), texts.to(device))


@torch.no_grad()
def wise_ensemble(model: torch.nn.Module, base_state: dict[str, torch.Tensor], alpha: float) -> None:
    """Set ``model``'s floating-point weights to (1 - alpha)·base + alpha·current, in place (WiSE-FT);
    integer buffers keep the current values."""
    for key, value in model.state_dict().items():
        if value.is_floating_point():
            value.mul_(alpha).add_(base_state[key].to(value.device, value.dtype), alpha=1.0 - alpha)


def hlip_params(**overrides: Any) -> ContrastiveParams:
    """HLIP's optimisation defaults: Adam (AdamW without weight decay) at lr 1e-4, cosine decay, no warmup."""
    base = {"epochs": 10, "lr": 1e-4, "weight_decay": 0.0, "warmup_fraction": 0.0, "patience": 3}
    return ContrastiveParams(**{**base, **overrides})


def tune_hlip(
    base: str,
    tiles: dict[str, str],
    slide_cases: dict[str, str],
    captions: dict[str, str],
    splits: dict[str, str],
    out_dir: str,
    *,
    name: str | None = None,
    batch_size: int = 64,
    params: ContrastiveParams | None = None,
    num_workers: int = 0,
    val_tiles_per_slide: int = 16,
    threads: int | None = None,
    sentences: dict[str, list[str]] | None = None,
    sentence_prob: float = 0.5,
    wise_alpha: float = 1.0,
) -> list[dict[str, float]]:
    """Tune the image and text towers of ``base`` on (tile, clinical caption) pairs of train patients
    with the grouped symmetric CLIP loss; val patients' pairs give the early-stopping loss. Writes the
    tuned encoder folder (open_clip or HF CLIP format, as the base) with ``training.json``.

    ``tiles``: slide_id -> tiles h5; ``slide_cases``: slide_id -> case_id; ``captions``: case_id ->
    paragraph (slidesnake/data/captions.py); ``splits``: slide_id -> train/val/test of one fold;
    ``sentences``: case_id -> its single-field sentences (:func:`slidesnake.data.captions.case_sentences`),
    which a training case shows instead of its paragraph with probability ``sentence_prob``
    (:class:`CaptionViews`); validation always reads the paragraphs. ``wise_alpha`` < 1 saves the
    weight-space ensemble (1 - α)·base + α·tuned (WiSE-FT, Wortsman et al. 2022), which keeps more of
    the base's zero-shot knowledge of texts the clinical captions never use.
    """
    from slidesnake.data.captions import log_truncation
    from slidesnake.device import select_device
    from slidesnake.features.encoders import load_encoder

    params = params or hlip_params()
    if not 0.0 < wise_alpha <= 1.0:
        raise HlipError(f"vl.hlip.wise_alpha must lie in (0, 1], got {wise_alpha}")
    if threads:
        torch.set_num_threads(threads)
    device = select_device(params.device)
    params = ContrastiveParams(**{**asdict(params), "device": str(device)})
    seed_all(params.seed)
    encoder = load_encoder(base, device)
    towers = ClipTowers(encoder)
    case_ids = sorted(captions)
    case_index = {c: i for i, c in enumerate(case_ids)}
    texts = [captions[c] for c in case_ids]
    truncated = log_truncation(texts, towers.tokenizer, "clinical captions", towers.context_length)
    case_sentences = [list(sentences.get(c, [])) for c in case_ids] if sentences else None
    views, pool = CaptionViews.build(texts, case_sentences, sentence_prob if sentences else 0.0)
    tokens = towers.tokenize(pool)
    text_generator = torch.Generator().manual_seed(params.seed)

    def part(split: str) -> dict[str, str]:
        return {s: p for s, p in tiles.items() if splits.get(s) == split}

    train_items = pair_items(part("train"), slide_cases, case_index)
    val_items = pair_items(part("val"), slide_cases, case_index, max_per_slide=val_tiles_per_slide)
    if not train_items:
        raise HlipError(
            "HLIP tuning has no training pairs: no train-split slide has both tiles and a clinical caption "
            "(check the clinical table's case_id against the slide sheet, and the tiles files)"
        )
    if len({g for _, _, g in train_items}) < 2:
        raise HlipError("HLIP tuning needs train pairs from at least 2 cases with captions (contrast needs negatives)")
    size = encoder.spec.image_size
    train_set = TilePairs(train_items, size, augment=True, seed=params.seed)
    loader = pair_loader(train_set, batch_size, shuffle=True, seed=params.seed, num_workers=num_workers)
    val_loader = (
        pair_loader(TilePairs(val_items, size), batch_size, shuffle=False, seed=0, num_workers=0) if val_items else None
    )

    def validation() -> float:
        losses, weights = [], []
        for batch in val_loader:
            losses.append(float(hlip_step_loss(towers, tokens, batch, device)))
            weights.append(len(batch[1]))
        return sum(v * w for v, w in zip(losses, weights)) / max(1, sum(weights))

    base_state = {k: v.detach().clone() for k, v in encoder.model.state_dict().items()} if wise_alpha < 1 else {}
    start = time.monotonic()
    history = fit_contrastive(
        encoder,
        encoder.model.parameters(),
        lambda batch: hlip_step_loss(towers, tokens, batch, device, views, text_generator),
        lambda epoch: loader,
        len(loader),
        params,
        validation if val_loader is not None else None,
    )
    seconds = time.monotonic() - start
    if wise_alpha < 1.0:
        wise_ensemble(encoder.model, base_state, wise_alpha)
    n_train = len(train_items)
    training = {
        "name": name or f"hlip-{encoder.spec.name}",
        "objective": "hlip",
        "base": base,
        "pairs": {"train": n_train, "val": len(val_items), "cases": len({g for _, _, g in train_items})},
        "truncated_captions": truncated,
        "sentence_views": {"prob": views.sentence_prob, "distinct_sentences": len(pool) - len(texts)},
        "wise_alpha": wise_alpha,
        "batch_size": batch_size,
        "params": params_record(params),
        "seconds": seconds,
        "pairs_per_second": n_train * len(history) / max(seconds, 1e-9),
        "history": history,
    }
    save_tuned_encoder(encoder.cpu(), out_dir, training)
    log.info("%s: tuned %s in %.0f s on %d pairs -> %s", training["name"], base, seconds, n_train, out_dir)
    return history


def open_clip_model_cfg(encoder: Any) -> dict[str, Any]:
    """The open_clip model config a loaded open_clip encoder was built from (folder, tiny-clip or pair)."""
    import json
    from pathlib import Path

    from slidesnake.features.encoders import TINY_CLIP_CFG

    source = str(encoder.spec.source)
    folder = Path(source)
    config = (folder if folder.is_dir() else folder.parent) / "open_clip_config.json"
    if config.is_file():
        return json.loads(config.read_text())["model_cfg"]
    if encoder.spec.family == "tiny":
        return copy.deepcopy(TINY_CLIP_CFG)
    if source.startswith("open_clip:"):
        import open_clip

        return open_clip.get_model_config(source[len("open_clip:") :].split("/")[0])
    if source.startswith("hf-hub:"):
        from slidesnake.features.encoders import _hub_folder

        hub = _hub_folder(encoder.spec.name, source[len("hf-hub:") :], "open_clip")
        return json.loads((hub / "open_clip_config.json").read_text())["model_cfg"]
    raise HlipError(f"encoder '{encoder.spec.name}': cannot tell which open_clip config it was built from ({source})")


def save_tuned_encoder(encoder: Any, out_dir: str, training: dict[str, Any]) -> None:
    """Write a tuned encoder in its base's format, atomically, plus ``training.json``: an open_clip folder
    (config with the base's mean/std, safetensors weights), or a CLIPModel ``save_pretrained`` folder."""
    from pathlib import Path

    from slidesnake.io.atomic import atomic_path, write_json

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if hasattr(encoder.model, "text_model"):  # Hugging Face CLIP
        import shutil
        import tempfile

        with tempfile.TemporaryDirectory(dir=out) as tmp:
            encoder.model.save_pretrained(tmp, safe_serialization=True)
            encoder.tokenizer.save_pretrained(tmp)
            write_json(
                Path(tmp) / "preprocessor_config.json",
                {"image_mean": list(encoder.spec.mean), "image_std": list(encoder.spec.std)},
            )
            for item in Path(tmp).iterdir():
                shutil.move(str(item), out / item.name)
    else:
        import safetensors.torch

        state = {k: v.detach().cpu().contiguous() for k, v in encoder.model.state_dict().items()}
        with atomic_path(out / "open_clip_model.safetensors") as tmp_path:
            safetensors.torch.save_file(state, str(tmp_path))
        write_json(
            out / "open_clip_config.json",
            {
                "model_cfg": open_clip_model_cfg(encoder),
                "preprocess_cfg": {"mean": list(encoder.spec.mean), "std": list(encoder.spec.std)},
            },
        )
    write_json(out / "training.json", training)


def read_fold(folds_csv: str, fold: int, key: str = "vl.hlip.fold") -> dict[str, str]:
    """slide_id -> train/val/test of one fold of a folds.csv (slidesnake/train/splits.py); ``key`` is the
    config key that chose the fold, for the error."""
    import pandas as pd

    folds = pd.read_csv(folds_csv, dtype={"slide_id": str, "case_id": str})
    part = folds[folds["fold"] == fold]
    if part.empty:
        raise HlipError(f"{folds_csv} has no fold {fold} (config key {key}); folds: {sorted(folds['fold'].unique())}")
    return dict(zip(part["slide_id"], part["split"]))


def tune_hlip_files(
    base: str,
    tile_files: list[str],
    captions_parquet: str,
    folds_csv: str,
    sheet_tsv: str,
    fold: int,
    out_dir: str,
    survival_edges: list[float] | None = None,
    **kwargs: Any,
) -> list[dict[str, float]]:
    """:func:`tune_hlip` from the pipeline's files: tiles h5 per slide (named ``{slide_id}.h5``), the
    clinical captions table (its field columns give the sentence views, survival binned at
    ``survival_edges``), the folds and the slide sheet."""
    from pathlib import Path

    import pandas as pd

    from slidesnake.data.captions import DEFAULT_SURVIVAL_BINS, case_sentences
    from slidesnake.sheet import read_sheet

    sheet = read_sheet(sheet_tsv)
    captions = pd.read_parquet(captions_parquet)
    tiles = {Path(p).stem: str(p) for p in tile_files}
    return tune_hlip(
        base,
        tiles,
        dict(zip(sheet["slide_id"], sheet["case_id"])),
        dict(zip(captions["case_id"], captions["caption"])),
        read_fold(folds_csv, fold),
        out_dir,
        sentences=case_sentences(captions, survival_edges or DEFAULT_SURVIVAL_BINS),
        **kwargs,
    )
