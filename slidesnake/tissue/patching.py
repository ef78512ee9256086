"""Resolution-exact patch grids: one level-0 grid per magnification, origin (0, 0), stride = size.

The 20x patch side is round(256·0.5/mpp) level-0 pixels and 5x is exactly 4× that, so each 5x cell
covers a 4×4 block of 20x cells. Cells are kept by CLAM's ``four_pt`` rule (any of the four points
at ±¼ patch from the centre in tissue, centre not in a hole of that contour), evaluated for the
whole grid at once by a scanline point-in-polygon test (no per-point Python calls).
"""

from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np

from slidesnake.io.atomic import write_h5
from slidesnake.io.coords import CoordsFileError, read_coords  # noqa: F401 (re-exported: callers import them here)
from slidesnake.io.slide import (
    ResolutionError,
    SlideError,
    SlideInfo,
    mag_to_mpp,
    patch_size_level0,
    read_plan,
    slide_info,
)
from slidesnake.tissue.segmentation import STATUS_NO_TISSUE, STATUS_OK, read_tissue

log = logging.getLogger(__name__)

FRACTION_SAMPLES = 8  # tissue fraction is measured on an 8×8 lattice of points per cell
_MAX_CROSSING_CELLS = 4_000_000  # rows × edges per chunk of the scanline test


def points_in_polygon(polygon: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Even-odd inside test of every point of the lattice xs × ys in one polygon: (len(ys), len(xs)) bool.

    For each lattice row the polygon edges' crossings are found at once, and each point's parity is
    the number of crossings to its left (one global searchsorted over all rows).
    """
    poly = np.asarray(polygon, dtype=np.float64).reshape(-1, 2)
    xs = np.asarray(xs, dtype=np.float64)
    ys = np.asarray(ys, dtype=np.float64)
    out = np.zeros((len(ys), len(xs)), dtype=bool)
    if len(poly) < 3 or not len(xs) or not len(ys):
        return out
    x0, y0 = poly[:, 0], poly[:, 1]
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    chunk = max(1, _MAX_CROSSING_CELLS // len(poly))
    for r0 in range(0, len(ys), chunk):
        out[r0 : r0 + chunk] = _rows_inside(x0, y0, x1, y1, xs, ys[r0 : r0 + chunk])
    return out


def _rows_inside(x0, y0, x1, y1, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    yy = ys[:, None]
    crosses = (y0 > yy) != (y1 > yy)
    rows, edges = np.nonzero(crosses)
    if not len(rows):
        return np.zeros((len(ys), len(xs)), dtype=bool)
    y_row = ys[rows]
    x_cross = x0[edges] + (y_row - y0[edges]) * (x1[edges] - x0[edges]) / (y1[edges] - y0[edges])
    lo = min(x_cross.min(), xs.min())
    span = max(x_cross.max(), xs.max()) - lo + 1.0
    keys = np.sort(rows * span + (x_cross - lo))
    row_start = np.searchsorted(keys, np.arange(len(ys)) * span, side="left")
    queries = np.arange(len(ys))[:, None] * span + (xs[None, :] - lo)
    left = np.searchsorted(keys, queries.ravel(), side="right").reshape(queries.shape) - row_start[:, None]
    return (left % 2) == 1


def grid_shape(width: int, height: int, size0: int) -> tuple[int, int]:
    """(rows, cols) of the level-0 grid: every cell whose top-left lies inside the slide."""
    return -(-int(height) // size0), -(-int(width) // size0)


def keep_mask(contours: list, holes: list, width: int, height: int, size0: int) -> np.ndarray:
    """CLAM ``four_pt`` keep decision for every grid cell: (rows, cols) bool.

    Per contour, only the grid window over its bounding box is tested; a cell is kept if any contour
    keeps it (any of its four points inside that contour, its centre in none of that contour's holes).
    """
    n_rows, n_cols = grid_shape(width, height, size0)
    keep = np.zeros((n_rows, n_cols), dtype=bool)
    half = size0 // 2
    shift = half // 2
    for contour, contour_holes in zip(contours, holes):
        poly = np.asarray(contour, dtype=np.float64).reshape(-1, 2)
        (c0, c1), (r0, r1) = (_cell_range(poly[:, k], size0, n) for k, n in ((0, n_cols), (1, n_rows)))
        if c0 >= c1 or r0 >= r1:
            continue
        cols, rows = np.arange(c0, c1), np.arange(r0, r1)
        xs = np.stack([cols * size0 + half - shift, cols * size0 + half + shift], axis=1).ravel()
        ys = np.stack([rows * size0 + half - shift, rows * size0 + half + shift], axis=1).ravel()
        four = points_in_polygon(poly, xs, ys).reshape(len(rows), 2, len(cols), 2).any(axis=(1, 3))
        for hole in contour_holes:
            four &= ~points_in_polygon(hole, cols * size0 + half, rows * size0 + half)
        keep[r0:r1, c0:c1] |= four
    return keep


def tissue_fraction(contours: list, holes: list, width: int, height: int, size0: int) -> np.ndarray:
    """Fraction of each grid cell covered by tissue (contours minus their holes), on an 8×8 point lattice."""
    n_rows, n_cols = grid_shape(width, height, size0)
    k = FRACTION_SAMPLES
    inside = np.zeros((n_rows * k, n_cols * k), dtype=bool)
    step = size0 / k
    for contour, contour_holes in zip(contours, holes):
        poly = np.asarray(contour, dtype=np.float64).reshape(-1, 2)
        (c0, c1), (r0, r1) = (_cell_range(poly[:, i], size0, n) for i, n in ((0, n_cols), (1, n_rows)))
        if c0 >= c1 or r0 >= r1:
            continue
        xs = (np.arange(c0 * k, c1 * k) + 0.5) * step
        ys = (np.arange(r0 * k, r1 * k) + 0.5) * step
        region = points_in_polygon(poly, xs, ys)
        for hole in contour_holes:
            region &= ~points_in_polygon(hole, xs, ys)
        inside[r0 * k : r1 * k, c0 * k : c1 * k] |= region
    return inside.reshape(n_rows, k, n_cols, k).mean(axis=(1, 3))


def patch_coords(tissue: dict, mag: float, patch_size: int = 256, min_tissue_fraction: float = 0.0) -> np.ndarray:
    """Level-0 top-left corners (N, 2) int64 of kept patches at ``mag``, row-major (y, then x)."""
    if not 0.0 <= min_tissue_fraction <= 1.0:
        raise ValueError(f"min_tissue_fraction must be in [0, 1], got {min_tissue_fraction}")
    if tissue["status"] != STATUS_OK or not tissue["contours"]:
        return np.zeros((0, 2), dtype=np.int64)
    size0 = patch_size_level0(tissue["mpp"], mag, patch_size)
    width, height = int(tissue["width"]), int(tissue["height"])
    keep = keep_mask(tissue["contours"], tissue["holes"], width, height, size0)
    if min_tissue_fraction > 0:
        keep &= tissue_fraction(tissue["contours"], tissue["holes"], width, height, size0) >= min_tissue_fraction
    rows, cols = np.nonzero(keep)  # np.nonzero is row-major
    return np.stack([cols, rows], axis=1).astype(np.int64) * size0


def patch_slide(
    tissue_json: str | os.PathLike | dict,
    mag: float,
    out_h5: str | os.PathLike,
    *,
    patch_size: int = 256,
    min_tissue_fraction: float = 0.0,
    allow_upsample: bool = False,
    fallback_mpp: float | None = None,
) -> int:
    """Write the DESIGN §2 coords h5 for one slide and magnification; returns the number of patches.

    A non-ok slide, or a slide too coarse for ``mag`` (ResolutionError), gets an empty (0, 2) coords
    set with the reason in attr ``status``, never an exception. ``fallback_mpp`` only fills a record
    that has no mpp (an older or hand-made JSON).
    """
    tissue = tissue_json if isinstance(tissue_json, dict) else read_tissue(tissue_json)
    mpp = tissue.get("mpp") or fallback_mpp
    attrs: dict[str, Any] = {
        "patch_size": int(patch_size), "patch_size_level0": 0, "target_mpp": mag_to_mpp(mag),
        "read_level": -1, "read_downsample": 0.0, "mpp_source": tissue.get("mpp_source") or "",
        "magnification": float(mag), "slide_id": tissue["slide_id"], "status": tissue["status"],
    }  # fmt: skip
    coords = np.zeros((0, 2), dtype=np.int64)
    # A slide without tissue still gets its read plan, so downstream files describe the same grid.
    if (tissue["status"] == STATUS_OK or tissue["status"].startswith(STATUS_NO_TISSUE)) and mpp:
        try:
            plan = read_plan(_info_of_record(tissue, mpp), mag, patch_size, allow_upsample)
        except ResolutionError as exc:
            attrs["status"] = f"resolution: {exc}"
            log.warning("%s", exc)
        except SlideError as exc:
            attrs["status"] = f"unreadable: {exc}"
            log.warning("%s", exc)
        else:
            attrs.update(
                patch_size_level0=plan.patch_size_level0, read_level=plan.read_level,
                read_downsample=plan.read_downsample, upsample=plan.upsample,
            )  # fmt: skip
            if tissue["status"] == STATUS_OK:
                coords = patch_coords({**tissue, "mpp": mpp}, mag, patch_size, min_tissue_fraction)
    write_h5(out_h5, {"coords": coords}, attrs, dataset_attrs={"coords": coords_dataset_attrs(tissue, attrs, mpp)})
    log.info("%s: %d patches at %gx", tissue["slide_id"], len(coords), mag)
    return len(coords)


def coords_dataset_attrs(tissue: dict, attrs: dict[str, Any], mpp: float | None) -> dict[str, Any]:
    """The attributes CLAM's and TRIDENT's readers look up on the ``coords`` dataset (not the file).

    TRIDENT (``read_coords``/``create_patcher``): ``patch_size`` (px at the target magnification),
    ``level0_magnification``, ``target_magnification``, ``patch_size_level0``, ``overlap``, ``name``,
    ``level0_width``/``level0_height``. CLAM (``Whole_Slide_Bag_FP``) reads ``patch_size`` px at
    ``patch_level``: our read level, which covers exactly one patch whenever the slide has a level at
    the target mpp (a 20x scan at 20x and 5x); otherwise no level is exact and ``read_size`` says what
    CLAM would need (see docs/formats.md).
    """
    width, height = int(tissue.get("width") or 0), int(tissue.get("height") or 0)
    level = int(attrs["read_level"])
    downsample = float(attrs["read_downsample"]) or 1.0
    size0 = int(attrs["patch_size_level0"])
    return {
        "patch_size": int(attrs["patch_size"]),
        "patch_size_level0": size0,
        "level0_magnification": round(mag_to_mpp(mpp), 4) if mpp else 0.0,
        "target_magnification": float(attrs["magnification"]),
        "overlap": 0,
        "name": str(tissue["slide_id"]),
        "savetodir": "",
        "level0_width": width,
        "level0_height": height,
        "patch_level": max(level, 0),
        "read_size": round(size0 / downsample) if size0 else 0,
        "downsample": [downsample, downsample],
        "level_dim": [width, height],
        "downsampled_level_dim": [round(width / downsample), round(height / downsample)],
        "wsi_name": str(tissue["slide_id"]),
        "target_mpp": float(attrs["target_mpp"]),
    }


def _info_of_record(tissue: dict, mpp: float) -> SlideInfo:
    """SlideInfo for the read plan from the record's pyramid; older records without one reopen the slide."""
    if "level_downsamples" not in tissue:
        info = slide_info(tissue["path"], fallback_mpp=mpp)
        return SlideInfo(**{**info.__dict__, "mpp": float(mpp)})
    return SlideInfo(
        path=tissue["path"],
        width=int(tissue["width"]),
        height=int(tissue["height"]),
        mpp=float(mpp),
        mpp_source=tissue.get("mpp_source") or "",
        level_dimensions=tuple(tuple(d) for d in tissue["level_dimensions"]),
        level_downsamples=tuple(float(d) for d in tissue["level_downsamples"]),
        vendor=tissue.get("vendor"),
        objective_power=tissue.get("objective_power"),
    )


def _cell_range(values: np.ndarray, size0: int, n: int) -> tuple[int, int]:
    """Half-open range of grid cells whose four-point lattice may touch [min(values), max(values)]."""
    lo = max(0, int(np.floor(values.min() / size0)) - 1)
    hi = min(n, int(np.floor(values.max() / size0)) + 2)
    return lo, hi
