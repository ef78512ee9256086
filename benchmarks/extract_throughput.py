"""Feature-extraction throughput: pure model vs end-to-end, and end-to-end vs a bare OpenSlide read loop.

Writes a synthetic 20x Aperio slide with a patch grid of at least 2,000 patches, then prints for each
model (tiny-clip and a random-weight ViT-B-32): (a) model patches/s on uint8 tensors already in memory
(preprocess + encode), (b) end-to-end ``extract_features`` patches/s, and b/a; plus one process reading
the same regions with OpenSlide and doing nothing else, and the peak RSS at half and full slide size.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/extract_throughput.py [--grid 45] [--vit-patches 256]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import open_clip
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from slidesnake.features.device import inference_context, select_device  # noqa: E402
from slidesnake.features.encoders import OPENAI_MEAN, OPENAI_STD, load_encoder  # noqa: E402
from slidesnake.features.extract import extract_features  # noqa: E402
from slidesnake.io.atomic import write_h5  # noqa: E402
from slidesnake.io.slide import open_slide, read_patch, read_plan, slide_info  # noqa: E402
from slidesnake.io.svs import write_svs  # noqa: E402

PATCH = 256


def texture(x: int, y: int, w: int, h: int, downsample: float) -> np.ndarray:
    """Deterministic stain-like texture for any region of any level (so the slide never sits in memory)."""
    yy, xx = np.mgrid[y : y + h, x : x + w].astype(np.float32) * downsample
    r = 180 + 50 * np.sin(xx / 23.0) * np.cos(yy / 31.0)
    g = 110 + 60 * np.sin((xx + yy) / 47.0)
    b = 170 + 40 * np.cos(xx / 13.0 - yy / 17.0)
    return np.clip(np.stack([r, g, b], axis=-1), 0, 255).astype(np.uint8)


def make_slide(folder: Path, grid: int) -> tuple[Path, Path, Path]:
    side = grid * PATCH
    slide = write_svs(folder / "bench.svs", texture, size=(side, side), mpp=0.5, app_mag=20.0, downsamples=(1, 4, 16))
    coords = np.array([(x * PATCH, y * PATCH) for y in range(grid) for x in range(grid)], dtype=np.int64)
    attrs = {"patch_size": PATCH, "patch_size_level0": PATCH, "target_mpp": 0.5, "magnification": 20.0}
    write_h5(folder / "coords.h5", {"coords": coords}, attrs)
    write_h5(folder / "coords_half.h5", {"coords": coords[: len(coords) // 2]}, attrs)
    return slide, folder / "coords.h5", folder / "coords_half.h5"


def openslide_only(slide: Path, coords: np.ndarray) -> float:
    handle = open_slide(slide)
    plan = read_plan(slide_info(handle), 20.0, PATCH)
    start = time.perf_counter()
    for x, y in coords:
        read_patch(handle, int(x), int(y), plan)
    return len(coords) / (time.perf_counter() - start)


def model_only(encoder, patches: torch.Tensor, batch: int, device: torch.device) -> float:
    patches = patches.to(device)
    with inference_context(device):
        encoder.encode_image(encoder.preprocess(patches[:batch]))  # warm-up
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for i in range(0, len(patches), batch):
            encoder.encode_image(encoder.preprocess(patches[i : i + batch])).float().cpu()
    return len(patches) / (time.perf_counter() - start)


def vit_b32_encoder_dir(folder: Path) -> Path:
    """A random-weight ViT-B-32 saved as an open_clip folder, loaded through the real local-dir path."""
    out = folder / "vit-b-32"
    out.mkdir(exist_ok=True)
    cfg = open_clip.get_model_config("ViT-B-32")
    (out / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg, "preprocess_cfg": {"mean": OPENAI_MEAN, "std": OPENAI_STD}}))
    torch.manual_seed(0)
    torch.save(open_clip.CLIP(**cfg).state_dict(), out / "open_clip_pytorch_model.bin")
    return out


def peak_rss_mb() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return own / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", type=int, default=45, help="slide is grid x grid patches (45 -> 2,025)")
    parser.add_argument("--vit-patches", type=int, default=0, help="patches for ViT-B-32 (0 = all; CPU needs fewer)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = select_device(args.device)
    print(f"device {device}, torch threads {torch.get_num_threads()}, cpus {os.cpu_count()}, workers {args.num_workers}")

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        start = time.perf_counter()
        slide, coords_h5, half_h5 = make_slide(folder, args.grid)

        with h5py.File(coords_h5) as f:
            coords = f["coords"][()]
        print(f"slide {args.grid * PATCH}^2 px, {len(coords)} patches, written in {time.perf_counter() - start:.1f} s")

        reader = openslide_only(slide, coords)
        print(f"OpenSlide-only read loop (1 process): {reader:8.1f} patches/s")
        handle = open_slide(slide)
        plan = read_plan(slide_info(handle), 20.0, PATCH)

        models = [("tiny-clip", "tiny-clip", len(coords)), ("ViT-B-32 (random)", str(vit_b32_encoder_dir(folder)), args.vit_patches or len(coords))]
        for label, name, n in models:
            encoder = load_encoder(name, device)
            sub = coords[:n]
            patches = torch.from_numpy(np.stack([read_patch(handle, int(x), int(y), plan) for x, y in sub]))
            a = model_only(encoder, patches, args.batch_size, device)
            del patches
            sub_h5 = folder / f"coords_{n}.h5"
            write_h5(sub_h5, {"coords": sub}, {"patch_size": PATCH, "patch_size_level0": PATCH, "target_mpp": 0.5, "magnification": 20.0})
            start = time.perf_counter()
            extract_features(slide, sub_h5, [name], [str(folder / f"{label[:4]}.h5")], batch_size=args.batch_size, num_workers=args.num_workers, device=str(device))
            b = n / (time.perf_counter() - start)
            print(f"{label:18s} n={n:5d}  (a) model-only {a:8.1f} patches/s  (b) end-to-end {b:8.1f} patches/s  b/a = {b / a:.2f}"
                  + (f"  b/OpenSlide-only = {b / reader:.2f}" if name == "tiny-clip" else ""))

        for label, h5 in (("half slide", half_h5), ("full slide", coords_h5)):
            extract_features(slide, h5, ["tiny-clip"], [str(folder / f"mem_{label[:4]}.h5")], batch_size=args.batch_size, num_workers=args.num_workers, device=str(device))
            print(f"peak RSS after tiny-clip extraction of {label}: {peak_rss_mb():.0f} MB")
        if device.type == "cuda":
            print(f"peak CUDA memory: {torch.cuda.max_memory_allocated() / 2**20:.0f} MB")


if __name__ == "__main__":
    main()
