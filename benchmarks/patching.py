"""Benchmark: segmentation + 5x/20x patching on a large synthetic 40x slide, against CLAM-style selection.

The slide (default 80,000 × 60,000 px at 0.25 µm/px, mostly glass, ragged tissue islands with holes and
fragments, drawn on a 4 µm/px map) is written once with a region callable and cached under benchmarks/results/. The reference
selects patches as CLAM does: per contour, a grid over its bounding box, a ``cv2.pointPolygonTest``
four-point check per point and a centre-in-hole check, in a process pool of 4, on the same contours.

    .venv/bin/python benchmarks/patching.py [--width 80000 --height 60000] [--also-quarter]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from slidesnake.io.slide import patch_size_level0  # noqa: E402
from slidesnake.io.svs import GLASS_RGB, write_svs  # noqa: E402
from slidesnake.tissue.patching import patch_coords  # noqa: E402
from slidesnake.tissue.segmentation import SegmentationParams, segment_slide  # noqa: E402

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


def _clam_chunk(args) -> list[tuple[int, int]]:
    """CLAM's isInContourV3_Easy + isInHoles for a chunk of points of one contour."""
    contour, holes, points, size = args
    half = size // 2
    shift = int(half * 0.5)
    kept = []
    for px, py in points:
        cx, cy = px + half, py + half
        four = ((cx - shift, cy - shift), (cx + shift, cy + shift), (cx + shift, cy - shift), (cx - shift, cy + shift))
        if not any(cv2.pointPolygonTest(contour, (float(a), float(b)), False) >= 0 for a, b in four):
            continue
        if any(cv2.pointPolygonTest(hole, (float(cx), float(cy)), False) > 0 for hole in holes):
            continue
        kept.append((px, py))
    return kept


def clam_reference(record: dict, mag: float, pool, slide_origin: bool = False) -> int:
    """Patch count selected CLAM's way (grid over each contour's bounding box, per-point tests, pool).

    ``slide_origin`` snaps each box's grid to the slide's (0, 0) grid, as ours is: the counts must then
    agree exactly, which isolates the origin as the only source of difference.
    """
    size = patch_size_level0(record["mpp"], mag)
    total = 0
    for contour, holes in zip(record["contours"], record["holes"]):
        cont = np.asarray(contour, np.int32).reshape(-1, 1, 2)
        hole_arrs = [np.asarray(h, np.int32).reshape(-1, 1, 2) for h in holes]
        bx, by, bw, bh = cv2.boundingRect(cont)
        if slide_origin:
            bw, bh = bw + bx % size, bh + by % size
            bx, by = bx - bx % size, by - by % size
        xs, ys = np.meshgrid(np.arange(bx, bx + bw, size), np.arange(by, by + bh, size))
        points = np.stack([xs.ravel(), ys.ravel()], 1)
        chunks = [(cont, hole_arrs, c, size) for c in np.array_split(points, 4) if len(c)]
        total += sum(len(k) for k in pool.map(_clam_chunk, chunks))
    return total


def _measure(path: str, queue) -> None:
    t0 = time.perf_counter()
    record = segment_slide(path, SegmentationParams())
    t1 = time.perf_counter()
    n20, n5 = len(patch_coords(record, 20)), len(patch_coords(record, 5))
    t2 = time.perf_counter()
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    queue.put((record, t1 - t0, t2 - t1, n20, n5, peak_mb))


def run(path: Path) -> None:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    child = ctx.Process(target=_measure, args=(str(path), queue))
    child.start()
    record, seg_s, patch_s, n20, n5, peak_mb = queue.get()
    child.join()
    ours = seg_s + patch_s
    with ctx.Pool(4) as pool:
        t = time.perf_counter()
        r20, r5 = clam_reference(record, 20, pool), clam_reference(record, 5, pool)
        ref_patch_s = time.perf_counter() - t
        a20, a5 = clam_reference(record, 20, pool, True), clam_reference(record, 5, pool, True)
    ref = seg_s + ref_patch_s
    print(f"slide {path.name}: {record['width']} x {record['height']} px, {len(record['contours'])} contours, "
          f"{sum(map(len, record['holes']))} holes, {record['tissue_area_mm2']:.1f} mm² tissue")  # fmt: skip
    print(f"  ours:      segmentation {seg_s:.3f} s + patching (20x and 5x) {patch_s:.3f} s = {ours:.3f} s")
    print(f"  reference: segmentation {seg_s:.3f} s + CLAM-style patching {ref_patch_s:.3f} s = {ref:.3f} s")
    print(f"  patches 20x: ours {n20}, reference {r20} ({100 * (n20 - r20) / max(r20, 1):+.2f}%)")
    print(f"  patches 5x:  ours {n5}, reference {r5} ({100 * (n5 - r5) / max(r5, 1):+.2f}%)")
    print(f"  reference on our (0, 0)-origin grid: 20x {a20} ({n20 - a20:+d} vs ours), 5x {a5} ({n5 - a5:+d} vs ours)")
    print(f"  patches per second (ours, both grids, end to end): {(n20 + n5) / ours:,.0f}")
    print(f"  patching-only speed-up: {ref_patch_s / patch_s:.1f}x; end-to-end speed-up: {ref / ours:.1f}x")
    print(f"  peak memory (ours, child process RSS): {peak_mb:.0f} MB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width", type=int, default=80_000)
    parser.add_argument("--height", type=int, default=60_000)
    parser.add_argument("--also-quarter", action="store_true", help="also run a slide of half the width and height")
    args = parser.parse_args()
    print("timings taken on a shared machine under load; ratios are from one run on the same data")
    sizes = [(args.width, args.height)] + ([(args.width // 2, args.height // 2)] if args.also_quarter else [])
    for width, height in sizes:
        run(build_slide(width, height))


if __name__ == "__main__":
    main()
