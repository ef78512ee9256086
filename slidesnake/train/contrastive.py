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
    params: ContrastiveParams | None = None,
    fallback_mpp: float | None = None,
) -> list[dict[str, float]]:
    """CPLIP-style MIL-NCE alignment of an open_clip encoder (``base``) with a prompt dictionary.

    ``slides``: slide_id -> (slide file, coords at ``magnification``); ``split``: slide_id -> train/val/test
    (only train slides are trained on; val gives early stopping; test is never read). Writes the aligned
    encoder as an open_clip folder (``training.json`` names it ``name``).
    """
    from slidesnake.device import select_device
    from slidesnake.features.encoders import load_encoder
    from slidesnake.models.vl.cplip import positive_mask, text_bag, trainable_parameters

    params = params or ContrastiveParams(epochs=30, lr=1e-3, weight_decay=0.0, patience=5)
    device = select_device(params.device)
    params = ContrastiveParams(**{**asdict(params), "device": str(device)})
    seed_all(params.seed)
    encoder = load_encoder(base, device)
    model = encoder.model
    trainable = trainable_parameters(model, tune)
    rng = np.random.default_rng(params.seed)
    image_size = encoder.spec.image_size
    tiles, targets = {}, {}
    for part in ("train", "val"):
        chosen = [s for s in slides if split.get(s) == part and len(slides[s][1])]
        if part == "train" and not chosen:
            raise ValueError("CPLIP alignment: no training slide with patches in this fold")
        images, image_class = [], []
        for slide_id in chosen:
            path, coords = slides[slide_id]
            pick = rng.choice(len(coords), size=min(tiles_per_slide, len(coords)), replace=False)
            images.append(torch.from_numpy(read_slide_tiles(path, coords[np.sort(pick)], magnification, image_size)))
            image_class.append(torch.full((len(pick),), labels[slide_id]))
        tiles[part] = torch.cat(images) if images else torch.zeros((0, image_size, image_size, 3), torch.uint8)
        targets[part] = torch.cat(image_class) if image_class else torch.zeros(0, dtype=torch.long)
    tokens_of = encoder.tokenizer
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

    val_texts = [t for c in classes for t in bags[c]]
    val_class = torch.tensor([k for k, c in enumerate(classes) for _ in bags[c]])

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
