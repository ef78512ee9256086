"""Bags for MIL: read one slide's feature (or hierarchy) h5 into tensors, subsample very large bags.

Bags are read lazily per step, so memory holds one bag at a time whatever the cohort size.
"""

from __future__ import annotations

import h5py
import numpy as np
import torch

from slidesnake.errors import InputError
from slidesnake.io.coords import plain
from slidesnake.models.mil.base import Bag, subsample  # noqa: F401  (moved to the model layer; re-exported)


class BagFileError(InputError):
    """A features/hierarchy h5 lacks the datasets of its file contract (DESIGN §2)."""


def load_bag(path: str, input_kind: str = "flat", coords: bool = True, parent_features: bool = False) -> Bag:
    """Read a features h5 (``flat``) or hierarchy h5 (``hierarchy``) into a :class:`Bag` (may be empty).

    ``coords=False`` leaves the coordinates out (models that do not declare the ``coords`` input); a
    hierarchy's mask is always read, its ``parent_features`` (the 5x parents' own features, (N5, D)) when
    ``parent_features`` is set (HiVE-MIL, ViLa-MIL).
    """
    with h5py.File(path, "r") as f:
        if "features" not in f:
            raise BagFileError(f"{path} has no 'features' dataset; rerun the features/hierarchy rule")
        features = torch.from_numpy(np.asarray(f["features"], dtype=np.float32))
        if input_kind == "hierarchy":
            needed = ("mask", "parent_coords", "parent_features") if parent_features else ("mask", "parent_coords")
            for key in needed:
                if key not in f:
                    raise BagFileError(
                        f"{path} has no {key!r} dataset; is it a hierarchy (hier_5x_20x) file? rerun the hierarchy rule"
                    )
            return Bag(
                features,
                torch.from_numpy(np.asarray(f["parent_coords"], dtype=np.int64)) if coords else None,
                torch.from_numpy(np.asarray(f["mask"], dtype=bool)),
                torch.from_numpy(np.asarray(f["parent_features"], dtype=np.float32)) if parent_features else None,
            )
        xy = torch.from_numpy(np.asarray(f["coords"], dtype=np.int64)) if coords and "coords" in f else None
    return Bag(features, xy)


def feature_dim(path: str) -> int:
    """The feature dimension D of a features or hierarchy h5, read from its dataset shape."""
    with h5py.File(path, "r") as f:
        return int(f["features"].shape[-1])


def bag_attrs(path: str) -> dict:
    """What a features h5 says it holds: its ``encoder`` and ``magnification`` attrs, when recorded."""
    with h5py.File(path, "r") as f:
        return {key: plain(f.attrs[key]) for key in ("encoder", "magnification") if key in f.attrs}


def bag_length(path: str) -> int:
    """Number of instances (or parent regions) in a features/hierarchy h5, without reading the data."""
    with h5py.File(path, "r") as f:
        return int(f["features"].shape[0]) if "features" in f else 0
