"""Link each 5x patch to its 4×4 = 16 20x children on the shared level-0 grid (DESIGN §3).

Both grids start at level-0 (0, 0) and the 5x patch side is exactly 4× the 20x side, so a
20x patch's parent and slot follow from integer division alone: slot = dy·4 + dx, a fixed
row-major position, never file order (HiVE-MIL's code keeps file order and samples >16
children at random; both are avoided here).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import h5py
import numpy as np

from slidesnake.errors import InputError
from slidesnake.io.atomic import write_h5

log = logging.getLogger(__name__)
CHILDREN_PER_SIDE = 4
N_CHILDREN = CHILDREN_PER_SIDE * CHILDREN_PER_SIDE


class HierarchyError(InputError):
    """The 5x and 20x inputs do not describe one aligned grid; the message names the files."""


@dataclass(frozen=True)
class Hierarchy:
    """Children of each kept parent: features (P,16,D), mask (P,16), coords (P,16,2)."""

    features: np.ndarray
    mask: np.ndarray
    coords: np.ndarray
    parent_coords: np.ndarray
    parent_index: np.ndarray  # row of each parent in the 5x file
    n_orphans: int  # 20x patches whose 5x cell was not kept at 5x


def link(
    parent_coords: np.ndarray,
    child_coords: np.ndarray,
    child_features: np.ndarray,
    child_size_level0: int,
) -> Hierarchy:
    """Place every 20x child in its parent's slot; parents without children are dropped."""
    parent_coords = np.asarray(parent_coords, dtype=np.int64).reshape(-1, 2)
    child_coords = np.asarray(child_coords, dtype=np.int64).reshape(-1, 2)
    child_features = np.asarray(child_features, dtype=np.float32)
    parent_size = CHILDREN_PER_SIDE * child_size_level0
    dim = child_features.shape[1] if child_features.ndim == 2 else 0
    if len(parent_coords) == 0 or len(child_coords) == 0:  # no tissue at one magnification
        return Hierarchy(
            np.zeros((0, N_CHILDREN, dim), np.float32),
            np.zeros((0, N_CHILDREN), bool),
            np.zeros((0, N_CHILDREN, 2), np.int64),
            np.zeros((0, 2), np.int64),
            np.zeros(0, np.int64),
            len(child_coords),
        )

    if np.any(parent_coords % parent_size) or np.any(child_coords % child_size_level0):
        raise HierarchyError(
            f"coordinates are not on the aligned grid (20x side {child_size_level0}, 5x side {parent_size} level-0 px)"
        )
    parent_cell = parent_coords // parent_size
    child_cell = child_coords // parent_size
    slot = ((child_coords // child_size_level0) % CHILDREN_PER_SIDE) @ np.array([1, CHILDREN_PER_SIDE])

    # Match child cells to parent rows by a sorted key lookup (vectorised, no dict of tuples).
    width = int(max(parent_cell[:, 0].max(initial=0), child_cell[:, 0].max(initial=0))) + 1
    parent_key = parent_cell[:, 1] * width + parent_cell[:, 0]
    child_key = child_cell[:, 1] * width + child_cell[:, 0]
    order = np.argsort(parent_key, kind="stable")
    sorted_keys = parent_key[order]
    pos = np.searchsorted(sorted_keys, child_key)
    found = pos < len(sorted_keys)
    found[found] = sorted_keys[pos[found]] == child_key[found]
    parent_row = np.full(len(child_key), -1, dtype=np.int64)
    parent_row[found] = order[pos[found]]

    kept_parents = np.unique(parent_row[found])
    new_index = np.full(len(parent_coords), -1, dtype=np.int64)
    new_index[kept_parents] = np.arange(len(kept_parents))
    n = len(kept_parents)
    features = np.zeros((n, N_CHILDREN, dim), dtype=np.float32)
    mask = np.zeros((n, N_CHILDREN), dtype=bool)
    coords = np.zeros((n, N_CHILDREN, 2), dtype=np.int64)
    rows = new_index[parent_row[found]]
    features[rows, slot[found]] = child_features[found]
    mask[rows, slot[found]] = True
    coords[rows, slot[found]] = child_coords[found]
    return Hierarchy(features, mask, coords, parent_coords[kept_parents], kept_parents, int((~found).sum()))


def link_files(features_5x: str | os.PathLike, features_20x: str | os.PathLike, out_h5: str | os.PathLike) -> Hierarchy:
    """Read the 5x and 20x feature files of one slide and write the hierarchical file (DESIGN §2)."""
    with h5py.File(features_5x, "r") as f5, h5py.File(features_20x, "r") as f20:
        parent_coords = f5["coords"][:]
        parent_features = f5["features"][:]
        child_coords = f20["coords"][:]
        child_features = f20["features"][:]
        encoder5, encoder20 = f5.attrs.get("encoder"), f20.attrs.get("encoder")
        size20 = int(f20.attrs["patch_size_level0"]) if "patch_size_level0" in f20.attrs else None
        size5 = int(f5.attrs["patch_size_level0"]) if "patch_size_level0" in f5.attrs else None
    if encoder5 != encoder20:
        raise HierarchyError(
            f"{features_5x} ({encoder5}) and {features_20x} ({encoder20}) come from different encoders"
        )
    empty = len(parent_coords) == 0 or len(child_coords) == 0
    if size20 is None or size5 is None:
        raise HierarchyError(f"{features_5x} / {features_20x} lack the patch_size_level0 attribute")
    if not empty and size5 != CHILDREN_PER_SIDE * size20:
        raise HierarchyError(
            f"5x patch side {size5} in {features_5x} is not 4x the 20x side {size20} in {features_20x}: grids are not aligned"
        )
    if child_features.ndim != 2:
        child_features = child_features.reshape(len(child_coords), -1)
    hier = link(parent_coords, child_coords, child_features, size20)
    if hier.n_orphans:
        log.info("%s: %d 20x patches lie in 5x cells not kept at 5x; left out", features_20x, hier.n_orphans)
    write_h5(
        out_h5,
        {
            "features": hier.features,
            "mask": hier.mask,
            "coords": hier.coords,
            "parent_coords": hier.parent_coords,
            "parent_index": hier.parent_index,
            "parent_features": parent_features[hier.parent_index].astype(np.float32),
        },
        attrs={
            "encoder": encoder20,
            "dim": hier.features.shape[2],
            "patch_size_level0_20x": size20,
            "patch_size_level0_5x": size5,
            "n_orphans": hier.n_orphans,
        },
    )
    return hier
