"""CPLIP-style many-to-many alignment (DESIGN §3): model-side pieces used by the loop in train/contrastive.py.

A prompt dictionary (slidesnake/models/vl/prompts.py) gives each class a bag of descriptions; a slide's
image bag is a sample of its patches. MIL-NCE (train.contrastive.milnce_loss) treats every description
of an image's class as a positive, both directions. By default only the projection heads are tuned
(``visual.proj`` and ``text_projection`` of an open_clip CLIP; the towers stay frozen); ``last_block``
also tunes the last transformer block of each tower.

Image bags (``image_bag``): CPLIP retrieves the visual bag of each description with a pretrained VLM
(PLIP in the paper, vl-methods.md §1). We do the same with the base encoder before tuning: of
``candidates_per_slide`` random patches of a training slide, the ``tiles_per_slide`` most similar to
the slide's class (the renormalised mean of its dictionary descriptions) form its bag (``retrieved``,
the default). ``random`` takes a random sample instead. Retrieval matters when the class shows in a
minority of the tissue: a random bag of a demo_hard slide is mostly the stroma both classes share, and
MIL-NCE then ties that stroma to every class's descriptions.

Choices (CPLIP's bag sizes and temperature are not published, vl-methods.md §1): image bag = 64 tiles
per slide (the top-K order of magnitude zero-shot pools over) retrieved from 512 candidates, text bag =
8 descriptions sampled per class per step (about a third of a 9-12 entry dictionary, so steps see varied
positives), τ = 0.07 (CLIP's initial temperature, ln(1/0.07) = logit_scale init of CPLIP's MI-Zero
config). All are config keys (vl.cplip.image_bag, candidates_per_slide, tiles_per_slide,
texts_per_class, tau).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

TUNE_MODES = ("projection", "last_block")
IMAGE_BAGS = ("retrieved", "random")


def text_bag(
    bags: Mapping[str, Sequence[str]], classes: Sequence[str], per_class: int, rng: np.random.Generator
) -> tuple[list[str], np.ndarray]:
    """``per_class`` descriptions of each class (all of them when the bag is smaller) and their class index."""
    texts, index = [], []
    for k, name in enumerate(classes):
        bag = list(bags[name])
        pick = rng.choice(len(bag), size=min(per_class, len(bag)), replace=False)
        texts.extend(bag[i] for i in sorted(pick))
        index.extend([k] * len(pick))
    return texts, np.asarray(index)


def positive_mask(image_class: torch.Tensor, text_class: torch.Tensor) -> torch.Tensor:
    """(n_img, n_txt) bool: a text is a positive of an image iff it describes the image's slide's class."""
    return image_class.view(-1, 1) == text_class.view(1, -1)


def trainable_parameters(model: torch.nn.Module, tune: str = "projection") -> list[torch.nn.Parameter]:
    """Freeze an open_clip CLIP except its projection heads (and, for ``last_block``, each tower's last block)."""
    if tune not in TUNE_MODES:
        raise ValueError(f"vl.cplip.tune is {tune!r}; one of {TUNE_MODES}")
    for p in model.parameters():
        p.requires_grad_(False)
    visual_proj = getattr(model.visual, "proj", None)
    text_proj = getattr(model, "text_projection", None)
    if not isinstance(visual_proj, torch.nn.Parameter) or text_proj is None:
        raise ValueError(
            "CPLIP alignment tunes an open_clip CLIP's visual.proj and text_projection; this encoder has none "
            "(use an open_clip ViT CLIP such as QuiltNet or demo-clip as vl.cplip.base)"
        )
    modules: list[torch.nn.Module | torch.nn.Parameter] = [visual_proj, text_proj]
    if tune == "last_block":
        modules += [model.visual.transformer.resblocks[-1], model.transformer.resblocks[-1]]
    params = []
    for item in modules:
        for p in [item] if isinstance(item, torch.nn.Parameter) else list(item.parameters()):
            p.requires_grad_(True)
            params.append(p)
    return params


def class_directions(text: np.ndarray, text_class: np.ndarray, n_classes: int) -> np.ndarray:
    """(C, D): per class, the renormalised mean of its L2-normalised description embeddings."""
    text = text / np.linalg.norm(text, axis=1, keepdims=True)
    means = np.stack([text[text_class == k].mean(axis=0) for k in range(n_classes)])
    return means / np.linalg.norm(means, axis=1, keepdims=True)


def retrieve_bag(image: np.ndarray, direction: np.ndarray, size: int) -> np.ndarray:
    """Indices (ascending) of the ``size`` rows of ``image`` (N, D) most cosine-similar to ``direction`` (D,)."""
    if size >= len(image):
        return np.arange(len(image))
    sim = (image / np.linalg.norm(image, axis=1, keepdims=True)) @ direction
    return np.sort(np.argpartition(-sim, size - 1)[:size])
