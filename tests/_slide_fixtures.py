"""Tiny real-format slides for the tissue tests: known tissue rectangles, holes and ink on glass."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from slidesnake.io.svs import GLASS_RGB, write_svs, write_tiff

TISSUE_RGB = (200, 120, 170)  # eosin-pink, saturation ~ 102 of 255
BLUE_INK_RGB = (40, 70, 170)
GREEN_INK_RGB = (60, 150, 80)


def glass(width: int, height: int) -> np.ndarray:
    """A blank slide (glass only)."""
    image = np.empty((height, width, 3), np.uint8)
    image[:] = GLASS_RGB
    return image


def paint(image: np.ndarray, box: tuple[int, int, int, int], rgb: tuple[int, int, int]) -> np.ndarray:
    """Fill the level-0 box (x0, y0, x1, y1) with a colour, in place."""
    x0, y0, x1, y1 = box
    image[y0:y1, x0:x1] = rgb
    return image


def tissue_slide(width: int = 4096, height: int = 3072) -> tuple[np.ndarray, dict]:
    """Slide with one tissue block holding a glass hole, plus a separate smaller block.

    Returns the image and the boxes used, so tests can compare against the geometry they drew.
    """
    boxes = {
        "big": (512, 512, 2560, 2048),
        "hole": (1280, 1024, 1792, 1536),
        "small": (3072, 2304, 3584, 2816),
    }
    image = glass(width, height)
    paint(image, boxes["big"], TISSUE_RGB)
    paint(image, boxes["hole"], GLASS_RGB)
    paint(image, boxes["small"], TISSUE_RGB)
    return image, boxes


def ink_slide(width: int = 4096, height: int = 3072) -> tuple[np.ndarray, dict]:
    """Tissue block plus a blue and a green pen stroke on bare glass, away from the tissue."""
    image, boxes = tissue_slide(width, height)
    boxes["blue"] = (384, 2432, 2432, 2688)
    boxes["green"] = (3200, 256, 3456, 1792)
    paint(image, boxes["blue"], BLUE_INK_RGB)
    paint(image, boxes["green"], GREEN_INK_RGB)
    return image, boxes


def write_aperio(path: Path, image: np.ndarray, mpp: float | None = 0.25, app_mag: float | None = 40.0) -> Path:
    """Aperio SVS with a 1/4/16 pyramid."""
    return write_svs(path, image, mpp=mpp, app_mag=app_mag, downsamples=(1, 4, 16), tile=256)


def write_generic(path: Path, image: np.ndarray, mpp: float | None = 0.5) -> Path:
    """Generic tiled TIFF with resolution tags (or none)."""
    return write_tiff(path, image, mpp=mpp, downsamples=(1, 4, 16), tile=256)
