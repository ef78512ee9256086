"""Slide reading with resolution provenance: which µm/px a slide has, where that came from, and
how to read a patch at an exact target magnification without silent upsampling.

Magnification is defined by microns per pixel (mpp = 10 / mag; 20x = 0.5 µm/px). Scanners report
mpp in different places, so the slide's mpp is resolved in a fixed order and the source recorded.
"""

from __future__ import annotations

import ctypes
import logging
import math
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass

import cv2
import numpy as np
import openslide
import openslide.lowlevel

from slidesnake.errors import InputError

log = logging.getLogger(__name__)

# Level choice tolerance: a level up to 5% coarser than the target still counts as "not coarser"
# (hs2p's relative tolerance), so a 0.2527 µm/px scan reads 20x from level 0, never upsampling 1%.
LEVEL_TOLERANCE = 1.05
REFERENCE_MAG = 20.0
MPP_SOURCES = ("openslide.mpp-x", "tiff.resolution", "objective-power", "config-fallback")
_UNIT_MICRONS = {"centimeter": 1e4, "inch": 25400.0, "millimeter": 1e3, "micrometer": 1.0}


class SlideError(InputError):
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
        damage = tiff_damage(path)
        if damage is not None:
            raise UnreadableSlideError(f"{path}: {damage}; download it again (OpenSlide: {exc})") from exc
        raise UnreadableSlideError(f"{path}: not a slide format OpenSlide supports ({exc})") from exc
    except (openslide.OpenSlideError, OSError, ValueError) as exc:
        damage = tiff_damage(path)
        if damage is not None:
            raise UnreadableSlideError(f"{path}: {damage}; download it again (OpenSlide: {exc})") from exc
        raise UnreadableSlideError(f"{path}: cannot be opened ({exc})") from exc


TIFF_MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic and BigTIFF, both byte orders


def tiff_damage(path: str | os.PathLike) -> str | None:
    """Why a file with a TIFF header cannot be read ("truncated ..."/"corrupt ..."), or None.

    None when the file is not a TIFF (SVS, generic TIFF and most scanner formats are) or when its
    directories and image data are all inside the file (then it is a TIFF OpenSlide does not support).
    A download cut short keeps its header but loses the data or directories the header points to.
    """
    path = os.fspath(path)
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as fh:
            magic = fh.read(4)
    except OSError:
        return None
    if magic not in TIFF_MAGICS:
        return None
    import tifffile  # only on this failure path: tissue jobs start without it

    problems: list[str] = []

    class _Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            problems.append(record.getMessage())

    tiff_log = logging.getLogger("tifffile")
    handler, propagate = _Collect(), tiff_log.propagate
    tiff_log.addHandler(handler)
    tiff_log.propagate = False
    needed = 0
    try:
        with tifffile.TiffFile(path) as tif:
            for page in tif.pages:
                ends = [o + b for o, b in zip(page.dataoffsets, page.databytecounts)]
                needed = max([needed, *ends])
    except Exception as exc:  # noqa: BLE001 - any parse failure of a file with a TIFF header is damage
        return f"truncated or corrupt TIFF ({size:,} bytes; {type(exc).__name__}: {exc})"
    finally:
        tiff_log.removeHandler(handler)
        tiff_log.propagate = propagate
    if needed > size:
        return f"truncated TIFF: the file has {size:,} bytes but its directories point to data up to byte {needed:,}"
    offsets = [p for p in problems if "offset" in p or "missing" in p]
    if offsets:
        return f"truncated or corrupt TIFF ({size:,} bytes; {offsets[0]})"
    return None


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
            raise ValueError(f"mpp_fallback must be positive (µm/px), got {fallback_mpp}")
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
            f"{mag:g}x ({target:.4g} µm/px); drop {mag:g} from patching.magnifications or set "
            "patching.allow_upsample: true in the config"
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
        rgb = read_region_rgb(slide, (int(x), int(y)), plan.read_level, (plan.read_size, plan.read_size))
    except openslide.OpenSlideError as exc:
        raise UnreadableSlideError(f"{_slide_path(slide)}: region at ({x}, {y}) failed to decode ({exc})") from exc
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
            "set mpp_fallback: <µm/px> for this cohort in the config (slidesnake CLI: --mpp-fallback)"
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


def read_region_rgb(
    slide: openslide.OpenSlide, location: tuple[int, int], level: int, size: tuple[int, int]
) -> np.ndarray:
    """RGB uint8 (h, w, 3) of a region, transparent (unscanned) pixels composited on white.

    Reads OpenSlide's premultiplied ARGB straight into a numpy buffer: compositing premultiplied
    colour on white is ``c + 255 - a``, and the PIL image, its un-premultiply and ``np.asarray``'s
    copy (a third of a segmentation read) are skipped. Falls back to ``read_region`` on an OpenSlide
    object without the low-level handle (another openslide-python, an ImageSlide).
    """
    w, h = int(size[0]), int(size[1])
    handle = getattr(slide, "_osr", None)
    if handle is None or w <= 0 or h <= 0 or not hasattr(openslide.lowlevel, "_read_region"):
        return rgba_to_rgb(np.asarray(slide.read_region(location, level, size)))
    buf = np.empty((h, w), dtype=np.uint32)
    openslide.lowlevel._read_region(
        handle, buf.ctypes.data_as(ctypes.POINTER(ctypes.c_uint32)), int(location[0]), int(location[1]), level, w, h
    )
    bgra = buf.view(np.uint8).reshape(h, w, 4) if sys.byteorder == "little" else None
    if bgra is None:  # big-endian host: bytes are A, R, G, B
        argb = buf.view(np.uint8).reshape(h, w, 4)
        bgra = np.ascontiguousarray(argb[..., ::-1])
    rgb = cv2.cvtColor(bgra, cv2.COLOR_BGRA2RGB)
    alpha = bgra[..., 3]
    if alpha.min() < 255:  # premultiplied: on white, c' = c + (255 - a)
        cv2.add(rgb, cv2.cvtColor(255 - alpha, cv2.COLOR_GRAY2RGB), dst=rgb)
    return rgb


def rgba_to_rgb(rgba: np.ndarray) -> np.ndarray:
    """RGB from OpenSlide's RGBA, composited on white: unscanned (transparent) pixels read as glass."""
    rgb = rgba[..., :3]
    alpha = rgba[..., 3]
    if alpha.min() == 255:
        if rgba.dtype == np.uint8 and rgba.flags.c_contiguous:
            return cv2.cvtColor(rgba, cv2.COLOR_RGBA2RGB)  # one SIMD pass, ~15x numpy's strided copy
        return np.ascontiguousarray(rgb)
    a = alpha[..., None].astype(np.float32) / 255.0
    return (rgb.astype(np.float32) * a + 255.0 * (1.0 - a) + 0.5).astype(np.uint8)


def _slide_path(slide: openslide.OpenSlide) -> str:
    return str(getattr(slide, "_filename", "<slide>"))
