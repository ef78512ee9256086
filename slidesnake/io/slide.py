"""Slide reading with resolution provenance: which µm/px a slide has, where that came from, and
how to read a patch at an exact target magnification without silent upsampling.

Magnification is defined by microns per pixel (mpp = 10 / mag; 20x = 0.5 µm/px). Scanners report
mpp in different places, so the slide's mpp is resolved in a fixed order and the source recorded.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass

import cv2
import numpy as np
import openslide

log = logging.getLogger(__name__)

# Level choice tolerance: a level up to 5% coarser than the target still counts as "not coarser"
# (hs2p's relative tolerance), so a 0.2527 µm/px scan reads 20x from level 0, never upsampling 1%.
LEVEL_TOLERANCE = 1.05
REFERENCE_MAG = 20.0
MPP_SOURCES = ("openslide.mpp-x", "tiff.resolution", "objective-power", "config-fallback")
_UNIT_MICRONS = {"centimeter": 1e4, "inch": 25400.0, "millimeter": 1e3, "micrometer": 1.0}


class SlideError(Exception):
    """Base error for a slide; the message always names the file."""


class UnreadableSlideError(SlideError):
    """The file is not a slide, is truncated, or its pixels fail to decode."""


class ResolutionError(SlideError):
    """No mpp anywhere, or the slide is coarser than the target without ``allow_upsample``."""


@dataclass(frozen=True)
class SlideInfo:
    """Geometry and resolution of one slide, with the provenance of its mpp."""

    path: str
    width: int
    height: int
    mpp: float
    mpp_source: str
    level_dimensions: tuple[tuple[int, int], ...]
    level_downsamples: tuple[float, ...]
    vendor: str | None
    objective_power: float | None


@dataclass(frozen=True)
class ReadPlan:
    """How to read one patch at a target mpp: which level, how many pixels, and the resize after."""

    target_mpp: float
    patch_size: int
    patch_size_level0: int
    read_level: int
    read_downsample: float
    read_size: int
    upsample: bool


def open_slide(path: str | os.PathLike) -> openslide.OpenSlide:
    """Open a slide with OpenSlide; any failure becomes an UnreadableSlideError naming the file."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise UnreadableSlideError(f"{path}: file not found")
    try:
        return openslide.OpenSlide(path)
    except openslide.OpenSlideUnsupportedFormatError as exc:
        raise UnreadableSlideError(f"{path}: not a slide format OpenSlide supports ({exc})") from exc
    except (openslide.OpenSlideError, OSError, ValueError) as exc:
        raise UnreadableSlideError(f"{path}: cannot be opened ({exc})") from exc


def mag_to_mpp(mag: float) -> float:
    """Microns per pixel of a magnification (10 / mag: 20x = 0.5 µm/px)."""
    if mag <= 0:
        raise ValueError(f"magnification must be positive, got {mag}")
    return 10.0 / mag


def patch_size_level0(slide_mpp: float, mag: float, patch_size: int = 256) -> int:
    """Level-0 side of a patch; magnifications 20/k reuse an exact multiple of the 20x side so grids nest."""
    if slide_mpp <= 0:
        raise ValueError(f"slide mpp must be positive, got {slide_mpp}")
    base = max(1, round(patch_size * mag_to_mpp(REFERENCE_MAG) / slide_mpp))
    ratio = REFERENCE_MAG / mag
    if ratio >= 1 and math.isclose(ratio, round(ratio), abs_tol=1e-9):
        return base * round(ratio)
    return max(1, round(patch_size * mag_to_mpp(mag) / slide_mpp))


def resolve_mpp(properties: Mapping[str, str], fallback_mpp: float | None = None) -> tuple[float | None, str | None]:
    """Slide mpp and its source from OpenSlide properties, in provenance order; (None, None) if absent.

    OpenSlide's generic-tiff driver fills ``openslide.mpp-x`` from the TIFF resolution tags, so there
    the value is attributed to ``tiff.resolution``, which is where it truly came from.
    """
    vendor = properties.get("openslide.vendor")
    mpp = _positive_float(properties.get("openslide.mpp-x"))
    if mpp is not None:
        return mpp, ("tiff.resolution" if vendor == "generic-tiff" else "openslide.mpp-x")
    mpp = _tiff_resolution_mpp(properties)
    if mpp is not None:
        return mpp, "tiff.resolution"
    power = _positive_float(properties.get("openslide.objective-power"))
    if power is not None:
        return mag_to_mpp(power), "objective-power"
    if fallback_mpp is not None:
        if fallback_mpp <= 0:
            raise ValueError(f"fallback_mpp must be positive, got {fallback_mpp}")
        return float(fallback_mpp), "config-fallback"
    return None, None


def slide_info(path_or_slide: str | os.PathLike | openslide.OpenSlide, fallback_mpp: float | None = None) -> SlideInfo:
    """Geometry and resolved mpp of a slide; ResolutionError if no mpp source exists at all."""
    if isinstance(path_or_slide, openslide.OpenSlide):
        return _info_of(path_or_slide, _slide_path(path_or_slide), fallback_mpp)
    path = os.fspath(path_or_slide)
    slide = open_slide(path)
    try:
        return _info_of(slide, path, fallback_mpp)
    finally:
        slide.close()


def read_plan(info: SlideInfo, mag: float, patch_size: int = 256, allow_upsample: bool = False) -> ReadPlan:
    """Choose the coarsest level with mpp ≤ target × 1.05 and the region size to read from it.

    A slide coarser than the target is a ResolutionError unless ``allow_upsample``; then level 0 is
    read and enlarged, and the plan says so.
    """
    target = mag_to_mpp(mag)
    size0 = patch_size_level0(info.mpp, mag, patch_size)
    level_mpps = [info.mpp * ds for ds in info.level_downsamples]
    eligible = [i for i, m in enumerate(level_mpps) if m <= target * LEVEL_TOLERANCE]
    if eligible:
        level = max(eligible, key=lambda i: level_mpps[i])
        upsample = False
    elif allow_upsample:
        level = 0
        upsample = True
        log.warning(
            "%s: %.4g µm/px is coarser than %gx (%.4g µm/px); upsampling as configured",
            info.path,
            info.mpp,
            mag,
            target,
        )
    else:
        raise ResolutionError(
            f"{info.path}: slide resolution {info.mpp:.4g} µm/px (from {info.mpp_source}) is coarser than "
            f"{mag:g}x ({target:.4g} µm/px); drop this magnification or set allow_upsample: true in the config"
        )
    downsample = float(info.level_downsamples[level])
    read_size = max(1, round(size0 / downsample))
    return ReadPlan(target, patch_size, size0, level, downsample, read_size, upsample)


def read_patch(slide: openslide.OpenSlide, x: int, y: int, plan: ReadPlan) -> np.ndarray:
    """One (patch_size, patch_size, 3) uint8 RGB patch whose level-0 top-left corner is (x, y).

    Transparent pixels (outside the scanned area) become white, like glass; decode errors raise
    UnreadableSlideError naming the file.
    """
    try:
        region = slide.read_region((int(x), int(y)), plan.read_level, (plan.read_size, plan.read_size))
    except openslide.OpenSlideError as exc:
        raise UnreadableSlideError(f"{_slide_path(slide)}: region at ({x}, {y}) failed to decode ({exc})") from exc
    rgb = rgba_to_rgb(np.asarray(region))
    if plan.read_size == plan.patch_size:
        return rgb
    interp = cv2.INTER_AREA if plan.read_size > plan.patch_size else cv2.INTER_LINEAR
    return cv2.resize(rgb, (plan.patch_size, plan.patch_size), interpolation=interp)


def _info_of(slide: openslide.OpenSlide, path: str, fallback_mpp: float | None) -> SlideInfo:
    props = slide.properties
    mpp, source = resolve_mpp(props, fallback_mpp)
    if mpp is None:
        raise ResolutionError(
            f"{path}: no resolution found (no openslide.mpp-x, TIFF resolution tags or objective power); "
            "set the config key mpp_fallback (µm per pixel) for this cohort"
        )
    power = _positive_float(props.get("openslide.objective-power"))
    if power is not None and source != "objective-power" and not 0.5 < mag_to_mpp(power) / mpp < 2.0:
        log.warning("%s: mpp %.4g (%s) disagrees with objective power %gx; using the mpp", path, mpp, source, power)
    width, height = slide.dimensions
    return SlideInfo(
        path=path,
        width=int(width),
        height=int(height),
        mpp=float(mpp),
        mpp_source=source,
        level_dimensions=tuple((int(w), int(h)) for w, h in slide.level_dimensions),
        level_downsamples=tuple(float(d) for d in slide.level_downsamples),
        vendor=props.get("openslide.vendor"),
        objective_power=power,
    )


def _tiff_resolution_mpp(properties: Mapping[str, str]) -> float | None:
    unit = _UNIT_MICRONS.get(str(properties.get("tiff.ResolutionUnit", "")).lower())
    per_unit = _positive_float(properties.get("tiff.XResolution"))
    if unit is None or per_unit is None:
        return None
    return unit / per_unit


def _positive_float(value: object) -> float | None:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) and number > 0 else None


def rgba_to_rgb(rgba: np.ndarray) -> np.ndarray:
    """RGB from OpenSlide's RGBA, composited on white: unscanned (transparent) pixels read as glass."""
    rgb = rgba[..., :3]
    alpha = rgba[..., 3]
    if alpha.min() == 255:
        return np.ascontiguousarray(rgb)
    a = alpha[..., None].astype(np.float32) / 255.0
    return (rgb.astype(np.float32) * a + 255.0 * (1.0 - a) + 0.5).astype(np.uint8)


def _slide_path(slide: openslide.OpenSlide) -> str:
    return str(getattr(slide, "_filename", "<slide>"))
