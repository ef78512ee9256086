"""Tile sampling: a fixed-seed sample of at most K patches per slide, pixels read once at the target mpp.

``tiles/{mag}x/{slide_id}.h5`` holds ``tiles`` (N,H,W,3) uint8 and ``coords`` (N,2) int64 (level-0
top-left corners, a subset of the slide's patch coords, in coords order) with the read attributes.
Contrastive tuning (HLIP) reads its pixels from these files, never from the slides inside the training
loop. Tiles are chunked one per HDF5 chunk, so a loader reads any tile without decoding its neighbours.
"""

from __future__ import annotations

import hashlib
import logging
import os

import h5py
import numpy as np

from slidesnake.io.atomic import atomic_path
from slidesnake.io.coords import read_coords
from slidesnake.io.slide import open_slide, read_patch, read_plan, slide_info

log = logging.getLogger(__name__)


class TilesFileError(ValueError):
    """A tiles h5 that is missing, malformed or empty."""


def sample_indices(n: int, k: int, seed: int, slide_id: str) -> np.ndarray:
    """Sorted indices of at most ``k`` of ``n`` patches, a pure function of (n, k, seed, slide_id)."""
    if k < 1:
        raise ValueError(f"tiles per slide must be >= 1 (config key vl.hlip.tiles_per_slide), got {k}")
    if n <= k:
        return np.arange(n, dtype=np.int64)
    salt = int.from_bytes(hashlib.sha256(slide_id.encode()).digest()[:8], "little")
    rng = np.random.default_rng([seed, salt])
    return np.sort(rng.choice(n, size=k, replace=False)).astype(np.int64)


def sample_tiles(
    slide_path: str | os.PathLike,
    coords_h5: str | os.PathLike,
    out_h5: str | os.PathLike,
    *,
    slide_id: str,
    magnification: int = 20,
    tiles_per_slide: int = 64,
    seed: int = 0,
    fallback_mpp: float | None = None,
) -> int:
    """Read a fixed-seed sample of ≤ ``tiles_per_slide`` patches of ``coords_h5`` from the slide at the
    magnification's mpp and write them atomically to ``out_h5``; returns the number of tiles.

    A slide without patches (no tissue) gets a file with zero tiles and its status, and a warning.
    """
    coords, attrs = read_coords(coords_h5)
    patch_size = int(attrs.get("patch_size", 256))
    index = sample_indices(len(coords), tiles_per_slide, seed, slide_id)
    picked = coords[index]
    tiles = np.zeros((len(picked), patch_size, patch_size, 3), np.uint8)
    mpp = None
    if len(picked):
        slide = open_slide(slide_path)
        try:
            info = slide_info(slide, fallback_mpp)
            plan = read_plan(info, magnification, patch_size, allow_upsample=bool(attrs.get("upsample", False)))
            for i, (x, y) in enumerate(picked.tolist()):
                tiles[i] = read_patch(slide, x, y, plan)
            mpp = plan.target_mpp
        finally:
            slide.close()
    else:
        log.warning("%s: no patches in %s, so its tiles file holds zero tiles", slide_id, coords_h5)
    with atomic_path(out_h5) as tmp:
        with h5py.File(tmp, "w") as f:
            chunks = (1, patch_size, patch_size, 3) if len(tiles) else None
            f.create_dataset("tiles", data=tiles, chunks=chunks)
            f.create_dataset("coords", data=picked.reshape(-1, 2))
            f.create_dataset("index", data=index)
            f.attrs.update(
                {
                    "slide_id": slide_id,
                    "magnification": int(magnification),
                    "mpp": float(mpp if mpp is not None else 10.0 / magnification),
                    "patch_size": patch_size,
                    "n_patches": int(len(coords)),
                    "seed": int(seed),
                    "tiles_per_slide": int(tiles_per_slide),
                    "status": "ok" if len(tiles) else "no_tiles",
                }
            )
    log.info("%s: %d of %d patches sampled at %dx -> %s", slide_id, len(tiles), len(coords), magnification, out_h5)
    return len(tiles)


def tile_count(path: str | os.PathLike) -> int:
    """Number of tiles in a tiles h5 (TilesFileError naming the file if it is not one)."""
    try:
        with h5py.File(path, "r") as f:
            if "tiles" not in f:
                raise TilesFileError(f"{path}: no 'tiles' dataset; rerun the tiles rule for this slide")
            return int(f["tiles"].shape[0])
    except OSError as exc:
        raise TilesFileError(f"{path}: not a readable tiles h5 ({exc}); rerun the tiles rule for this slide") from exc


def read_rows(dataset: h5py.Dataset, rows: np.ndarray) -> np.ndarray:
    """Rows ``rows`` of an h5 dataset, in that order, one ``read_direct`` per row.

    h5py's fancy-index read (``dataset[sorted_rows]``) of a few scattered rows of a tiles file costs
    ~0.2 s (its point-selection path), a hundred times one chunk read per row: the training loader
    would wait on it (benchmarks/contrastive_speed.py).
    """
    rows = np.asarray(rows, dtype=np.int64)
    out = np.empty((len(rows), *dataset.shape[1:]), dataset.dtype)
    for i, r in enumerate(rows.tolist()):
        dataset.read_direct(out, np.s_[r : r + 1], np.s_[i : i + 1])
    return out


def read_tiles(path: str | os.PathLike, index: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``tiles`` (N,H,W,3) uint8 and ``coords`` (N,2) of a tiles h5, all or the rows of ``index``."""
    with h5py.File(path, "r") as f:
        if "tiles" not in f:
            raise TilesFileError(f"{path}: no 'tiles' dataset; rerun the tiles rule for this slide")
        if index is None:
            return f["tiles"][()], f["coords"][()].reshape(-1, 2)
        index = np.asarray(index, dtype=np.int64)
        return read_rows(f["tiles"], index), f["coords"][()].reshape(-1, 2)[index]
