"""Reading the coords contract (DESIGN §2): a coords/features h5's level-0 ``coords`` and its read attrs,
and the read plan those attrs imply for a slide. Patching, extraction and heatmaps all read it here.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import h5py
import numpy as np

from slidesnake.errors import InputError
from slidesnake.io.slide import ReadPlan, read_plan, slide_info

PLAN_ATTRS = ("magnification", "patch_size", "patch_size_level0")


class CoordsFileError(InputError):
    """A coords or features h5 lacks the ``coords`` dataset or the read attributes of its contract."""


def plain(value: Any) -> Any:
    """An h5 attribute as a plain Python value (bytes -> str, NumPy scalars -> Python scalars)."""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.generic):
        return value.item()
    return value


def read_attrs(path: str | os.PathLike) -> dict[str, Any]:
    """The root attributes of an h5 file as plain values."""
    with h5py.File(path, "r") as f:
        return {k: plain(v) for k, v in f.attrs.items()}


def read_coords(path: str | os.PathLike) -> tuple[np.ndarray, dict]:
    """Coords (N, 2) int64 and the root attributes of a coords (or features) h5."""
    with h5py.File(path, "r") as f:
        if "coords" not in f:
            raise CoordsFileError(f"{path}: no 'coords' dataset; rerun patching for this slide")
        coords = np.asarray(f["coords"][()], dtype=np.int64).reshape(-1, 2)
        attrs = {k: plain(v) for k, v in f.attrs.items()}
    return coords, attrs


def plan_from_attrs(
    slide_path: str | os.PathLike,
    attrs: Mapping[str, Any],
    where: str,
    fallback_mpp: float | None = None,
    error: type[Exception] = CoordsFileError,
) -> ReadPlan:
    """The read plan of patches described by ``attrs`` (magnification, patch_size[, upsample]) on a slide.

    When ``attrs`` records ``patch_size_level0`` the plan must reproduce it, otherwise the coords belong
    to another slide or mpp. ``where`` names the file in messages; ``error`` is the class raised.
    """
    missing = [key for key in PLAN_ATTRS[:2] if key not in attrs]
    if missing:
        raise error(
            f"{where}: attribute(s) {missing} missing (magnification, patch_size); rerun patching for this slide"
        )
    info = slide_info(slide_path, fallback_mpp=fallback_mpp)
    plan = read_plan(info, float(attrs["magnification"]), int(attrs["patch_size"]), bool(attrs.get("upsample", False)))
    if "patch_size_level0" in attrs and plan.patch_size_level0 != int(attrs["patch_size_level0"]):
        raise error(
            f"{where}: patch_size_level0={attrs['patch_size_level0']} but slide {slide_path} "
            f"({info.mpp:.4g} µm/px from {info.mpp_source}) gives {plan.patch_size_level0} at "
            f"{attrs['magnification']}x; the coords belong to another slide or mpp — rerun patching"
        )
    return plan
