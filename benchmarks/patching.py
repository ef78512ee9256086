"""Benchmark: segmentation + 20x and 5x grids on a large synthetic 40x slide, against hs2p and CLAM's recipe.

The slide (default 80,000 × 60,000 px at 0.25 µm/px, mostly glass, ragged tissue islands with holes and
fragments, drawn on a 4 µm/px map) is written once and cached under benchmarks/results/. Every method runs
in this one process on the same file, warm (one untimed call each first), interleaved, best of --repeats:

- ours: ``segment_slide`` + ``patch_coords`` at 20x and 5x (what the tissue job does).
- hs2p fastest path (hs2p 6.1.0 from PyPI, installed for this benchmark only, not a slidesnake
  dependency: ``pip install --no-deps hs2p==6.1.0 omegaconf==2.4.0``): one tissue mask
  (``resolve_tissue_mask``), then ``build_tiling_result_from_mask`` at 0.5 and 2.0 µm/px.
- hs2p public API: ``tile_slide`` per magnification (it segments each time).
- CLAM's recipe, serial (no process pool inside the timer): its mask (HSV saturation, median 7,
  threshold 8, close 4), for the mask IoU, and its per-point ``pointPolygonTest`` patch selection.

    .venv/bin/python benchmarks/patching.py [--width 80000 --height 60000] [--repeats 7]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from slidesnake.io.slide import open_slide, patch_size_level0, slide_info  # noqa: E402
from slidesnake.io.svs import GLASS_RGB, write_svs  # noqa: E402
from slidesnake.tissue.patching import patch_coords  # noqa: E402
from slidesnake.tissue.segmentation import (  # noqa: E402
    SegmentationParams,
    read_segmentation_image,
    segment_slide,
    tissue_mask,
)

RESULTS = Path(__file__).resolve().parent / "results"
MPP = 0.25
TISSUE = (205, 130, 180)
LABEL_DS = 16  # the tissue map is drawn at 4 µm/px and upsampled (nearest) for finer levels


def islands(width: int, height: int, seed: int = 0) -> list[dict]:
    """Ragged elliptical islands (with holes) and small fragments, in level-0 units."""
    rng = np.random.default_rng(seed)
    shapes = []
    for cx, cy in ((0.25, 0.3), (0.6, 0.35), (0.4, 0.72), (0.8, 0.7)):
        shapes.append({
            "c": (cx * width, cy * height), "r": (rng.uniform(0.08, 0.12) * width, rng.uniform(0.1, 0.16) * height),
            "k": rng.integers(3, 9, 4), "a": rng.uniform(0.03, 0.08, 4), "p": rng.uniform(0, 2 * np.pi, 4),
            "holes": [((cx + dx * 0.04) * width, (cy + dy * 0.05) * height, rng.uniform(0.015, 0.03) * width)
                      for dx, dy in ((-1, 0), (1, 0.5), (0, -1))],
        })  # fmt: skip
    for _ in range(12):
        shapes.append({
            "c": (rng.uniform(0.05, 0.95) * width, rng.uniform(0.05, 0.95) * height),
            "r": (rng.uniform(0.002, 0.006) * width,) * 2, "k": np.array([5]), "a": np.array([0.1]),
            "p": np.array([0.0]), "holes": [],
        })  # fmt: skip
    return shapes


def label_map(shapes: list[dict], width: int, height: int, ds: int = LABEL_DS) -> np.ndarray:
    """Tissue (1) / glass (0) map at 1/``ds`` of level 0, evaluated analytically at pixel centres, in strips."""
    out = np.zeros((-(-height // ds), -(-width // ds)), np.uint8)
    xs = ((np.arange(out.shape[1]) + 0.5) * ds)[None, :]
    for r0 in range(0, out.shape[0], 512):
        ys = ((np.arange(r0, min(r0 + 512, out.shape[0])) + 0.5) * ds)[:, None]
        strip = out[r0 : r0 + len(ys)]
        for s in shapes:
            (cx, cy), (rx, ry) = s["c"], s["r"]
            u, v = (xs - cx) / rx, (ys - cy) / ry
            theta = np.arctan2(v, u)
            edge = 1 + sum(a * np.sin(k * theta + p) for k, a, p in zip(s["k"], s["a"], s["p"]))
            inside = np.hypot(u, v) <= edge
            for hx, hy, hr in s["holes"]:
                inside &= (xs - hx) ** 2 + (ys - hy) ** 2 > hr**2
            strip[inside] = 1
    return out


def make_region_fn(labels: np.ndarray, ds: int = LABEL_DS):
    """region(x, y, w, h, level_ds): the label map cut and resized to that level, coloured glass/tissue."""
    colours = np.array([GLASS_RGB, TISSUE], np.uint8)

    def region(x: int, y: int, w: int, h: int, level_ds: float) -> np.ndarray:
        f = level_ds / ds  # label pixels per output pixel
        lx0, ly0 = int(x * f), int(y * f)
        lx1, ly1 = int(np.ceil((x + w) * f)) + 1, int(np.ceil((y + h) * f)) + 1
        cut = labels[ly0:ly1, lx0:lx1]
        canvas = np.zeros((ly1 - ly0, lx1 - lx0), np.uint8)
        canvas[: cut.shape[0], : cut.shape[1]] = cut
        scaled = cv2.resize(canvas, None, fx=1 / f, fy=1 / f, interpolation=cv2.INTER_NEAREST)
        ox, oy = int(round(x - lx0 / f)), int(round(y - ly0 / f))
        tile = scaled[oy : oy + h, ox : ox + w]
        out = np.empty((h, w), np.uint8)
        out[:] = 0
        out[: tile.shape[0], : tile.shape[1]] = tile
        return colours[out]

    return region


def build_slide(width: int, height: int) -> Path:
    path = RESULTS / f"synthetic_{width}x{height}.svs"
    if not path.exists():
        RESULTS.mkdir(parents=True, exist_ok=True)
        t = time.perf_counter()
        region = make_region_fn(label_map(islands(width, height), width, height))
        write_svs(path, region, size=(width, height), mpp=MPP,
                  downsamples=(1, 4, 16, 64), quality=70)  # fmt: skip
        print(f"wrote {path.name} in {time.perf_counter() - t:.0f} s")
    return path


def clam_select(record: dict, mag: float, slide_origin: bool = True) -> int:
    """Patches CLAM's way: per contour a grid over its bounding box, four-point ``pointPolygonTest`` and a
    centre-not-in-hole test per point (isInContourV3_Easy + isInHoles), serially. ``slide_origin`` snaps
    each box's grid to the slide's (0, 0) grid, as ours is, so the counts must agree exactly."""
    size = patch_size_level0(record["mpp"], mag)
    half, total = size // 2, 0
    shift = int(half * 0.5)
    for contour, holes in zip(record["contours"], record["holes"]):
        cont = np.asarray(contour, np.int32).reshape(-1, 1, 2)
        hole_arrs = [np.asarray(h, np.int32).reshape(-1, 1, 2) for h in holes]
        bx, by, bw, bh = cv2.boundingRect(cont)
        if slide_origin:
            bw, bh = bw + bx % size, bh + by % size
            bx, by = bx - bx % size, by - by % size
        for py in range(by, by + bh, size):
            for px in range(bx, bx + bw, size):
                cx, cy = px + half, py + half
                four = ((cx - shift, cy - shift), (cx + shift, cy + shift), (cx + shift, cy - shift),
                        (cx - shift, cy + shift))  # fmt: skip
                if not any(cv2.pointPolygonTest(cont, (float(a), float(b)), False) >= 0 for a, b in four):
                    continue
                if any(cv2.pointPolygonTest(h, (float(cx), float(cy)), False) > 0 for h in hole_arrs):
                    continue
                total += 1
    return total


def clam_mask(path: Path) -> np.ndarray:
    """CLAM's segmentTissue mask: the level nearest 64x read through PIL, HSV saturation, median blur 7,
    threshold 8, close 4 (WholeSlideImage.segmentTissue with the default preset)."""
    slide = open_slide(path)
    try:
        info = slide_info(slide)
        level = int(np.argmin([abs(np.log(d / 64.0)) for d in info.level_downsamples]))
        img = np.array(slide.read_region((0, 0), level, info.level_dimensions[level]).convert("RGB"))
    finally:
        slide.close()
    sat = cv2.medianBlur(cv2.cvtColor(img, cv2.COLOR_RGB2HSV)[:, :, 1], 7)
    _, mask = cv2.threshold(sat, 8, 255, cv2.THRESH_BINARY)
    return cv2.morphologyEx(mask, cv2.MORPH_CLOSE, np.ones((4, 4), np.uint8))


def our_mask(path: Path, params: SegmentationParams) -> np.ndarray:
    slide = open_slide(path)
    try:
        _, image, _ = read_segmentation_image(slide, slide_info(slide), params.seg_downsample)
    finally:
        slide.close()
    return tissue_mask(image, params)


def ours(path: Path, params: SegmentationParams) -> tuple[dict, int, int]:
    record = segment_slide(path, params)
    return record, len(patch_coords(record, 20)), len(patch_coords(record, 5))


def hs2p_methods(path: Path):
    """(fastest path, public API) callables for hs2p, or None when hs2p is not installed."""
    try:
        import hs2p
        from hs2p import SegmentationConfig, SlideSpec, TilingConfig, tile_slide
        from hs2p.tiling.mask import resolve_tissue_mask
        from hs2p.tiling.single import build_tiling_result_from_mask
        from hs2p.wsi.reader import open_slide as hs2p_open
    except ImportError:
        return None
    seg = SegmentationConfig(method="hsv", downsample=64, sthresh=8, mthresh=7, close=4)

    def tiling(spacing: float) -> TilingConfig:
        return TilingConfig(
            requested_spacing_um=spacing, requested_tile_size_px=256, tolerance=0.05, overlap=0.0, backend="openslide"
        )

    def fastest() -> tuple[int, int]:
        slide = hs2p_open(path, backend="openslide")
        try:
            mask = resolve_tissue_mask(slide=slide, segmentation=seg, sample_id=path.stem)
            counts = [
                build_tiling_result_from_mask(
                    slide=slide, resolved_mask=mask, image_path=path, backend="openslide",
                    requested_backend="openslide", requested_spacing_um=spacing,
                ).num_tiles
                for spacing in (0.5, 2.0)
            ]  # fmt: skip
        finally:
            slide.close()
        return counts[0], counts[1]

    def api() -> tuple[int, int]:
        spec = SlideSpec(sample_id=path.stem, image_path=path)
        r20 = tile_slide(spec, tiling=tiling(0.5), segmentation=seg)
        r5 = tile_slide(spec, tiling=tiling(2.0), segmentation=seg)
        return r20.num_tiles, r5.num_tiles

    return hs2p.__version__, fastest, api


def _timed(fn, *args):
    t = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - t, out


def run(path: Path, repeats: int) -> None:
    params = SegmentationParams()
    methods = {"ours": lambda: ours(path, params)}
    hs = hs2p_methods(path)
    if hs is None:
        print("hs2p is not installed: pip install --no-deps hs2p==6.1.0 omegaconf==2.4.0 (benchmark only)")
    else:
        version, fastest, api = hs
        methods.update({f"hs2p {version} fastest path": fastest, f"hs2p {version} tile_slide x2": api})
    outputs = {name: fn() for name, fn in methods.items()}  # warm-up: imports, first-call costs
    times: dict[str, list[float]] = {name: [] for name in methods}
    for rep in range(repeats):
        order = list(methods) if rep % 2 == 0 else list(methods)[::-1]  # interleaved, alternating order
        for name in order:
            times[name].append(_timed(methods[name])[0])
    record, n20, n5 = outputs["ours"]
    best = {name: min(t) for name, t in times.items()}
    print(f"slide {path.name}: {record['width']} x {record['height']} px, {len(record['contours'])} contours, "
          f"{sum(map(len, record['holes']))} holes, {record['tissue_area_mm2']:.1f} mm² tissue; "
          f"best of {repeats} warm runs, interleaved (median in brackets)")  # fmt: skip
    for name in methods:
        counts = outputs[name][1:] if name == "ours" else outputs[name]
        print(f"  {name:32s} {best[name]:.4f} s ({statistics.median(times[name]):.4f} s)  "
              f"patches 20x {counts[0]}, 5x {counts[1]}")  # fmt: skip
    for name in methods:
        if name != "ours":
            print(f"  ratio ours / {name}: {best['ours'] / best[name]:.2f}  (target <= 0.80 for the fastest path)")
    ours_mask, ref_mask = our_mask(path, params) > 0, clam_mask(path) > 0
    iou = (ours_mask & ref_mask).sum() / max(1, (ours_mask | ref_mask).sum())
    print(f"  tissue mask IoU vs CLAM's recipe (same level, median 7 / threshold 8 / close 4): {iou:.6f}")
    clam_s, (c20, c5) = _timed(lambda: (clam_select(record, 20), clam_select(record, 5)))
    patch_s = min(_timed(lambda: (patch_coords(record, 20), patch_coords(record, 5)))[0] for _ in range(3))
    print(f"  CLAM-style selection (serial, same contours, (0, 0) grid): 20x {c20} ({n20 - c20:+d} vs ours), "
          f"5x {c5} ({n5 - c5:+d} vs ours); {clam_s:.3f} s vs our grids {patch_s:.4f} s = {clam_s / patch_s:.0f}x")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width", type=int, default=80_000)
    parser.add_argument("--height", type=int, default=60_000)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--also-quarter", action="store_true", help="also run a slide of half the width and height")
    args = parser.parse_args()
    print("timings taken on a shared machine; ratios compare methods measured in the same run on the same file")
    sizes = [(args.width, args.height)] + ([(args.width // 2, args.height // 2)] if args.also_quarter else [])
    for width, height in sizes:
        run(build_slide(width, height), args.repeats)


if __name__ == "__main__":
    main()
