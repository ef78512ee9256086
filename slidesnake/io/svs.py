"""Writers for real-format pyramidal slides: Aperio SVS and generic tiled TIFF.

The demo cohort, the tests and the benchmarks all need slides that OpenSlide opens
exactly as it opens scanner output, so they are written here, once, with tifffile.
A slide is given either as an in-memory RGB array or, for slides too large for
memory, as a callable that renders any region of any pyramid level.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import cv2
import numpy as np
import tifffile

from slidesnake.io.atomic import atomic_path

# region(x, y, w, h, downsample) -> uint8 (h, w, 3): pixels of the level with that
# downsample, (x, y) in that level's coordinates.
RegionFn = Callable[[int, int, int, int, float], np.ndarray]
GLASS_RGB = (242, 242, 240)


def write_svs(
    path: str | os.PathLike,
    image: np.ndarray | RegionFn,
    *,
    size: tuple[int, int] | None = None,
    mpp: float | None = 0.25,
    app_mag: float | None = 40.0,
    downsamples: Sequence[int] = (1, 4, 16),
    tile: int = 256,
    quality: int = 85,
    thumbnail: int | None = 1024,
) -> Path:
    """Write an Aperio SVS (tiled JPEG pyramid + thumbnail) that OpenSlide reads as vendor ``aperio``.

    ``mpp`` or ``app_mag`` set to None leaves that key out of the ImageDescription, which is how
    slides without a calibrated resolution look. ``size`` (W, H) is required when ``image`` is a callable.
    """
    width, height = _size_of(image, size)
    base = (
        f"Aperio Image Library v12.0.15\r\n{width}x{height} [0,0 {width}x{height}] ({tile}x{tile}) JPEG/RGB Q={quality}"
    )
    keys = []
    if app_mag is not None:
        keys.append(f"AppMag = {app_mag:g}")
    if mpp is not None:
        keys.append(f"MPP = {mpp:.4f}")
    meta = "|".join(keys)
    first_desc = base + ("|" + meta if meta else "")
    with atomic_path(path) as tmp, tifffile.TiffWriter(tmp, bigtiff=_needs_bigtiff(width, height)) as tw:
        for i, ds in enumerate(downsamples):
            lw, lh = _level_size(width, height, ds)
            desc = first_desc if i == 0 else f"{base} -> {lw}x{lh} JPEG/RGB Q={quality}"
            _write_level(tw, image, ds, lw, lh, tile, quality, desc)
            if i == 0 and thumbnail:
                thumb = _thumbnail(image, width, height, thumbnail)
                tw.write(
                    thumb,
                    photometric="rgb",
                    compression="jpeg",
                    compressionargs={"level": quality},
                    description=f"Aperio Image Library v12.0.15\r\n{width}x{height} -> {thumb.shape[1]}x{thumb.shape[0]} - |{meta}",
                    subfiletype=0,
                    metadata=None,
                )
    return Path(path)


def write_tiff(
    path: str | os.PathLike,
    image: np.ndarray | RegionFn,
    *,
    size: tuple[int, int] | None = None,
    mpp: float | None = None,
    downsamples: Sequence[int] = (1, 4, 16),
    tile: int = 256,
    quality: int = 85,
) -> Path:
    """Write a generic tiled pyramidal TIFF; ``mpp`` becomes X/YResolution in pixels per centimetre."""
    width, height = _size_of(image, size)
    with atomic_path(path) as tmp, tifffile.TiffWriter(tmp, bigtiff=_needs_bigtiff(width, height)) as tw:
        for ds in downsamples:
            lw, lh = _level_size(width, height, ds)
            # OpenSlide's generic-tiff reader takes only directories flagged "reduced image" as levels.
            extra = {"subfiletype": 1 if ds > 1 else 0}
            if mpp is not None:
                ppcm = 1e4 / (mpp * ds)
                extra.update(resolution=(ppcm, ppcm), resolutionunit="CENTIMETER")
            _write_level(tw, image, ds, lw, lh, tile, quality, None, **extra)
    return Path(path)


def _write_level(tw, image, ds, lw, lh, tile, quality, description, **extra) -> None:
    tw.write(
        _tiles(image, ds, lw, lh, tile),
        shape=(lh, lw, 3),
        dtype=np.uint8,
        tile=(tile, tile),
        photometric="rgb",
        compression="jpeg",
        compressionargs={"level": quality},
        description=description,
        metadata=None,
        **extra,
    )


def _tiles(image, ds: int, lw: int, lh: int, tile: int) -> Iterator[np.ndarray]:
    """Yield the level's tiles row-major, edge tiles padded with glass."""
    level = _level_array(image, ds, lw, lh) if isinstance(image, np.ndarray) else None
    for ty in range(0, lh, tile):
        for tx in range(0, lw, tile):
            h, w = min(tile, lh - ty), min(tile, lw - tx)
            if level is not None:
                region = level[ty : ty + h, tx : tx + w]
            else:
                region = np.asarray(image(tx, ty, w, h, float(ds)), dtype=np.uint8)
            if (h, w) != (tile, tile):
                padded = np.empty((tile, tile, 3), np.uint8)
                padded[:] = GLASS_RGB
                padded[:h, :w] = region
                region = padded
            yield np.ascontiguousarray(region)


def _level_array(image: np.ndarray, ds: int, lw: int, lh: int) -> np.ndarray:
    if ds == 1:
        return image
    return cv2.resize(image, (lw, lh), interpolation=cv2.INTER_AREA)


def _thumbnail(image, width: int, height: int, max_side: int) -> np.ndarray:
    scale = max_side / max(width, height)
    tw, th = max(1, round(width * scale)), max(1, round(height * scale))
    if isinstance(image, np.ndarray):
        return cv2.resize(image, (tw, th), interpolation=cv2.INTER_AREA)
    ds = max(width, height) / max_side
    return cv2.resize(np.asarray(image(0, 0, tw, th, ds), np.uint8), (tw, th), interpolation=cv2.INTER_AREA)


def _level_size(width: int, height: int, ds: int) -> tuple[int, int]:
    return max(1, width // ds), max(1, height // ds)


def _size_of(image, size) -> tuple[int, int]:
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"slide image must be uint8 (H, W, 3), got {image.dtype} {image.shape}")
        return image.shape[1], image.shape[0]
    if size is None:
        raise ValueError("size=(width, height) is required when the slide is given as a region callable")
    return int(size[0]), int(size[1])


def _needs_bigtiff(width: int, height: int) -> bool:
    return width * height * 3 > 2**31
