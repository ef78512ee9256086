"""Tiny real-format models and slides for the feature tests.

Models are random but saved exactly as the real checkpoints are published (an open_clip hf-hub folder,
a ``save_pretrained`` CLIP folder, a bare checkpoint file), and can be placed in a Hugging Face cache
laid out as ``hf download`` leaves it, so the offline loading code runs unchanged.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import open_clip
import torch

from slidesnake.io.atomic import write_h5
from slidesnake.io.svs import write_svs

TINY_OPEN_CLIP_CFG = {
    "embed_dim": 24,
    "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 32, "layers": 1, "head_width": 16, "mlp_ratio": 2.0},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1, "mlp_ratio": 2.0},
}
TINY_MEAN = (0.5, 0.4, 0.3)
TINY_STD = (0.2, 0.25, 0.3)
COMMIT = "0123456789abcdef0123456789abcdef01234567"

CELL = 512  # level-0 side of one colour cell = one 20x patch on a 0.25 µm/px slide
GRID = 4  # GRID x GRID cells = one 5x patch


def tiny_open_clip(seed: int = 1) -> torch.nn.Module:
    """A random open_clip CLIP of the tiny test architecture."""
    torch.manual_seed(seed)
    return open_clip.CLIP(**TINY_OPEN_CLIP_CFG).eval()


def save_open_clip_folder(folder: Path, model: torch.nn.Module, safetensors: bool = True) -> Path:
    """An open_clip hf-hub folder: ``open_clip_config.json`` plus the weights file open_clip pushes."""
    folder.mkdir(parents=True, exist_ok=True)
    config = {"model_cfg": TINY_OPEN_CLIP_CFG, "preprocess_cfg": {"mean": list(TINY_MEAN), "std": list(TINY_STD)}}
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    if safetensors:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, folder / "open_clip_model.safetensors")
    else:
        torch.save(model.state_dict(), folder / "open_clip_pytorch_model.bin")
    return folder


def tiny_hf_clip(seed: int = 2):
    """A random transformers CLIPModel with a byte-level tokenizer (vocab = the 512 CLIP byte tokens)."""
    from open_clip.tokenizer import bytes_to_unicode
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(seed)
    vocab_size = 2 * 256 + 2
    config = CLIPConfig(
        text_config=dict(
            vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
            max_position_embeddings=16, bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1,
        ),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=8),
        projection_dim=20,
    )  # fmt: skip
    symbols = list(bytes_to_unicode().values())
    vocab = symbols + [s + "</w>" for s in symbols] + ["<|startoftext|>", "<|endoftext|>"]
    return CLIPModel(config).eval(), vocab


def save_hf_clip_folder(folder: Path, seed: int = 2) -> Path:
    """A ``save_pretrained`` CLIP folder (config, safetensors weights, tokenizer, preprocessor config)."""
    from transformers import CLIPTokenizer

    model, vocab = tiny_hf_clip(seed)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=16)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(
        json.dumps({"image_mean": list(TINY_MEAN), "image_std": list(TINY_STD)})
    )
    return folder


def put_in_hf_cache(cache: Path, repo_id: str, folder: Path) -> Path:
    """Lay ``folder`` out as the Hugging Face cache holds a downloaded repo (refs/main -> snapshot)."""
    repo_dir = cache / f"models--{repo_id.replace('/', '--')}"
    (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs" / "main").write_text(COMMIT)
    snapshot = repo_dir / "snapshots" / COMMIT
    shutil.copytree(folder, snapshot, dirs_exist_ok=True)
    return snapshot


def cell_rgb(cx: int, cy: int) -> tuple[int, int, int]:
    """Colour of grid cell (cx, cy): distinct per cell, flat, so JPEG keeps it within a few levels."""
    return (40 + 50 * cx, 40 + 50 * cy, 200 - 30 * (cx + cy) // 2)


def colour_grid_slide(path: Path, cells: int = GRID) -> Path:
    """A 0.25 µm/px (40x) Aperio SVS whose level-0 CELL x CELL cells each hold one flat colour."""
    side = cells * CELL
    image = np.empty((side, side, 3), np.uint8)
    for cy in range(cells):
        for cx in range(cells):
            image[cy * CELL : (cy + 1) * CELL, cx * CELL : (cx + 1) * CELL] = cell_rgb(cx, cy)
    return write_svs(path, image, mpp=0.25, app_mag=40.0, downsamples=(1, 4, 16), tile=256)


def coords_file(path: Path, coords: list[tuple[int, int]], mag: float, size0: int, patch_size: int = 256) -> Path:
    """A DESIGN §2 coords h5 written by hand (level-0 size given, not computed by the code under test)."""
    arr = np.asarray(coords, dtype=np.int64).reshape(-1, 2)
    attrs = {
        "patch_size": patch_size,
        "patch_size_level0": size0,
        "target_mpp": 10.0 / mag,
        "magnification": float(mag),
        "mpp_source": "openslide.mpp-x",
    }
    write_h5(path, {"coords": arr}, attrs)
    return path
