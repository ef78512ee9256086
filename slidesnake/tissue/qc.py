"""Quality control: a per-slide PNG (thumbnail, contours, holes, kept 5x patches) and the cohort table.

The PNG is what a user looks at first to trust a tissue mask; the table lists every slide with its
status, so a bad slide is visible instead of silently missing.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
import openslide

if TYPE_CHECKING:  # only the cohort table needs pandas; a tissue job does not import it
    import pandas as pd

from slidesnake.io.atomic import atomic_path
from slidesnake.io.coords import read_coords
from slidesnake.io.slide import SlideError, open_slide, patch_size_level0, rgba_to_rgb
from slidesnake.tissue.segmentation import read_tissue

log = logging.getLogger(__name__)

THUMBNAIL_SIDE = 1024
CONTOUR_RGB = (0, 200, 0)
HOLE_RGB = (0, 0, 255)
PATCH_RGB = (255, 140, 0)
QC_COLUMNS = ["slide", "status", "mpp", "mpp_source", "tissue_mm2", "patches_5x", "patches_20x", "seconds"]


def render_qc(
    slide_path: str | os.PathLike,
    tissue: dict,
    coords_5x: np.ndarray | None,
    out_png: str | os.PathLike,
    patch_size_level0_5x: int | None = None,
) -> None:
    """Write the QC PNG: thumbnail with contours (green), holes (blue) and kept 5x patches (orange).

    A slide that cannot be read gets a placeholder image that shows its status text.
    """
    try:
        thumb, scale = _thumbnail(slide_path)
    except SlideError as exc:
        log.warning("QC placeholder for %s: %s", slide_path, exc)
        _write_png(out_png, placeholder(tissue.get("status") or str(exc)))
        return
    canvas = thumb.copy()
    if coords_5x is not None and len(coords_5x):
        size0 = patch_size_level0_5x or patch_size_level0(tissue["mpp"], 5.0)
        for x, y in np.asarray(coords_5x):
            p0 = (int(x / scale[0]), int(y / scale[1]))
            p1 = (int((x + size0) / scale[0]) - 1, int((y + size0) / scale[1]) - 1)
            cv2.rectangle(canvas, p0, p1, PATCH_RGB, 1)
    for contour, holes in zip(tissue.get("contours", []), tissue.get("holes", [])):
        cv2.polylines(canvas, [_to_thumb(contour, scale)], True, CONTOUR_RGB, 2)
        for hole in holes:
            cv2.polylines(canvas, [_to_thumb(hole, scale)], True, HOLE_RGB, 2)
    label = f"{tissue.get('slide_id', '')}  {tissue.get('status', '')}  {len(coords_5x) if coords_5x is not None else 0} patches@5x"
    cv2.putText(canvas, label[:90], (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    _write_png(out_png, canvas)


def placeholder(text: str, width: int = 512, height: int = 128) -> np.ndarray:
    """White image with the status text wrapped over a few lines (for slides with no thumbnail)."""
    image = np.full((height, width, 3), 255, np.uint8)
    line_chars = 70
    for i in range(0, min(len(text), line_chars * 6), line_chars):
        y = 20 + 18 * (i // line_chars)
        cv2.putText(image, text[i : i + line_chars], (6, y), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (200, 0, 0), 1, cv2.LINE_AA)
    return image


def qc_table(rows: list[tuple[str, str, dict[int, str]]]) -> pd.DataFrame:
    """Cohort QC table from (slide_id, tissue_json_path, {mag: coords_h5_path}) rows, one row per slide."""
    records: list[dict[str, Any]] = []
    for slide_id, tissue_path, coords_paths in rows:
        tissue = read_tissue(tissue_path)
        record = {
            "slide": slide_id,
            "status": tissue["status"],
            "mpp": float(tissue["mpp"]) if tissue["mpp"] else np.nan,
            "mpp_source": tissue["mpp_source"] or "",
            "tissue_mm2": float(tissue["tissue_area_mm2"]),
            "patches_5x": 0,
            "patches_20x": 0,
            "seconds": float(tissue["seconds"]),
        }
        for mag, h5_path in coords_paths.items():
            column = f"patches_{int(mag)}x"
            if column in record:
                coords, _ = read_coords(h5_path)
                record[column] = len(coords)
        records.append(record)
    import pandas as pd

    table = pd.DataFrame.from_records(records, columns=QC_COLUMNS)
    return table.astype({"patches_5x": "int64", "patches_20x": "int64", "mpp": "float64"})


def _thumbnail(slide_path: str | os.PathLike) -> tuple[np.ndarray, tuple[float, float]]:
    slide = open_slide(slide_path)
    try:
        width, height = slide.dimensions
        thumb = rgba_to_rgb(np.asarray(slide.get_thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE)).convert("RGBA")))
    except (openslide.OpenSlideError, OSError) as exc:
        raise SlideError(f"{slide_path}: thumbnail failed ({exc})") from exc
    finally:
        slide.close()
    return thumb, (width / thumb.shape[1], height / thumb.shape[0])


def _to_thumb(polygon: list, scale: tuple[float, float]) -> np.ndarray:
    pts = np.asarray(polygon, dtype=np.float64).reshape(-1, 2) / np.asarray(scale)
    return np.round(pts).astype(np.int32).reshape(-1, 1, 2)


def _write_png(path: str | os.PathLike, rgb: np.ndarray) -> None:
    ok, buffer = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise OSError(f"{path}: PNG encoding failed")
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.tobytes())
