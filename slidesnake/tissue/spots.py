"""Visium spots on the coords contract: spot-centred tiles of a fixed physical size read at a target mpp.

A spot's tile is ``tile_um`` wide (default 112 µm = 224 px at 0.5 µm/px, HEST), centred on the spot's
full-resolution pixel position (``obsm["spatial"]``, x, y). Coords are the level-0 top-left corners
(int64), with the read attributes of patch coords files, so the feature extractor reads spot tiles
like any patches. The pixel size of the positions is the 100 µm spot pitch (``pitch_mpp``, set by the
Visium reader); an image whose own resolution or size disagrees with it is another image's positions
and stops with an error. Spots off tissue or with their centre off the image are dropped and reported.
"""

from __future__ import annotations

import gzip
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import anndata as ad
import h5py
import numpy as np
import pandas as pd

from slidesnake.io.atomic import atomic_path, write_h5
from slidesnake.io.coords import read_coords
from slidesnake.io.slide import (
    SlideInfo,
    UnreadableSlideError,
    mag_to_mpp,
    open_slide,
    read_patch,
    read_plan,
    slide_info,
)
from slidesnake.io.svs import write_tiff

log = logging.getLogger(__name__)

MPP_TOLERANCE = 0.10  # image mpp vs spot-pitch mpp
SIZE_TOLERANCE = 0.03  # full-res size vs hires PNG size / tissue_hires_scalef
MAX_OFF_IMAGE = 0.05  # more spot centres than this off the image: the positions belong to another image


class SpotsError(ValueError):
    """A Visium sample's image and spot positions do not fit together."""


def library(adata: ad.AnnData) -> tuple[str, dict]:
    """The (library id, ``uns["spatial"]`` entry) of a one-section AnnData."""
    spatial = adata.uns.get("spatial", {})
    if len(spatial) != 1:
        raise SpotsError(f"expected one library in uns['spatial'], found {list(spatial)}")
    return next(iter(spatial.items()))


def readable_image(path: str | os.PathLike, out: str | os.PathLike, mpp: float) -> Path:
    """``out``: a link to the image when OpenSlide reads it, else a pyramidal TIFF made from a gzipped or
    untiled TIFF (GEO ships ``*.tif.gz``, often as one strip), tagged with the positions' ``mpp``."""
    path, out = Path(path), Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if not path.name.endswith(".gz"):
        try:
            open_slide(path).close()
        except UnreadableSlideError:
            pass  # not readable as it is (e.g. one strip): converted to a pyramid below
        else:
            out.unlink(missing_ok=True)
            out.symlink_to(path.resolve())
            return out
    import tifffile

    source = path
    if path.name.endswith(".gz"):
        source = out.with_name(out.name + ".raw.tif")
        with gzip.open(path, "rb") as src, atomic_path(source) as tmp, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 24)
    try:
        image = tifffile.imread(source)
    except Exception as exc:  # noqa: BLE001 - any decoder failure is the same user-facing problem
        raise SpotsError(f"{path}: not a readable TIFF ({exc})") from exc
    finally:
        if source != path:
            source.unlink(missing_ok=True)
    if image.ndim == 3 and image.shape[0] in (3, 4) and image.shape[-1] not in (3, 4):
        image = np.moveaxis(image, 0, -1)
    if image.ndim != 3 or image.shape[-1] < 3:
        raise SpotsError(f"{path}: expected an RGB image, got shape {image.shape}")
    if image.dtype != np.uint8:
        image = (image / max(1, image.max()) * 255).astype(np.uint8)
    out.unlink(missing_ok=True)
    write_tiff(out, np.ascontiguousarray(image[..., :3]), mpp=mpp, downsamples=(1, 4, 16, 64))
    log.info("%s: converted to pyramidal %s (%.4g µm/px from the spot pitch)", path, out, mpp)
    return out


def check_image(adata: ad.AnnData, info: SlideInfo) -> float:
    """The positions' µm/px, after checking the image is the one the positions were made on."""
    sample, entry = library(adata)
    mpp = entry.get("pitch_mpp")
    if mpp is None:
        raise SpotsError(f"{sample}: no pitch_mpp in uns['spatial'] (no neighbouring spots); rerun visium_h5ad")
    if info.mpp_source != "config-fallback" and abs(info.mpp / mpp - 1) > MPP_TOLERANCE:
        raise SpotsError(
            f"{info.path}: image is {info.mpp:.4g} µm/px ({info.mpp_source}) but the spot positions of {sample} "
            f"are {mpp:.4g} µm/px (100 µm spot pitch): the image does not match the positions' pixel space"
        )
    hires = entry.get("images", {}).get("hires")
    scale = entry.get("scalefactors", {}).get("tissue_hires_scalef")
    if hires is not None and scale:
        expected = np.array(hires.shape[1::-1]) / scale
        size = np.array([info.width, info.height])
        if np.any(np.abs(size / expected - 1) > SIZE_TOLERANCE):
            raise SpotsError(
                f"{info.path}: image is {info.width}x{info.height} px but {sample}'s hires image / "
                f"tissue_hires_scalef says {expected[0]:.0f}x{expected[1]:.0f}: not the full-resolution image "
                "of these positions"
            )
    return float(mpp)


def spot_table(adata: ad.AnnData, info: SlideInfo, size0: int) -> pd.DataFrame:
    """Per spot (by barcode): centre, top-left level-0 corner and status (ok, off_tissue, off_image)."""
    xy = np.asarray(adata.obsm["spatial"], dtype=np.float64)
    table = pd.DataFrame({"x": xy[:, 0], "y": xy[:, 1]}, index=adata.obs_names.astype(str))
    table["left"] = np.rint(table["x"] - size0 / 2).astype(np.int64)
    table["top"] = np.rint(table["y"] - size0 / 2).astype(np.int64)
    status = np.full(len(table), "ok", dtype=object)
    if "in_tissue" in adata.obs:
        status[adata.obs["in_tissue"].to_numpy().astype(int) == 0] = "off_tissue"
    off = (table["x"] < 0) | (table["y"] < 0) | (table["x"] >= info.width) | (table["y"] >= info.height)
    status[off.to_numpy()] = "off_image"
    table["status"] = status
    return table


def write_spot_coords(
    h5ad: str | os.PathLike | ad.AnnData,
    image: str | os.PathLike,
    out_h5: str | os.PathLike,
    *,
    tile_um: float = 112.0,
    target_mpp: float = 0.5,
    allow_upsample: bool = False,
) -> dict[str, int]:
    """Write a spots coords h5 (``coords``, ``barcodes``; read attrs as patch coords files); returns counts."""
    adata = h5ad if isinstance(h5ad, ad.AnnData) else ad.read_h5ad(h5ad)
    sample, _ = library(adata)
    patch_size = round(tile_um / target_mpp)
    mag = 10.0 / target_mpp
    info = slide_info(image, fallback_mpp=library(adata)[1].get("pitch_mpp"))
    mpp = check_image(adata, info)
    plan = read_plan(info, mag, patch_size, allow_upsample)
    table = spot_table(adata, info, plan.patch_size_level0)
    counts = {k: int((table["status"] == k).sum()) for k in ("ok", "off_tissue", "off_image")}
    if counts["off_image"] > MAX_OFF_IMAGE * len(table):
        raise SpotsError(
            f"{image}: {counts['off_image']} of {len(table)} spots of {sample} lie off the "
            f"{info.width}x{info.height} image: the positions belong to another image"
        )
    for reason in ("off_tissue", "off_image"):
        if counts[reason]:
            log.warning(
                "%s: dropped %d spot(s) %s (of %d)", sample, counts[reason], reason.replace("_", " "), len(table)
            )
    ok = table[table["status"] == "ok"]
    dropped = table[table["status"] != "ok"]
    attrs: dict[str, Any] = {
        "magnification": mag, "patch_size": patch_size, "patch_size_level0": plan.patch_size_level0,
        "target_mpp": mag_to_mpp(mag), "read_level": plan.read_level, "read_downsample": plan.read_downsample,
        "upsample": plan.upsample, "mpp_source": "spot pitch", "slide_id": sample, "status": "ok",
        "tile_um": float(tile_um), "positions_mpp": mpp, "slide": os.fspath(image),
        **{f"n_{k}": v for k, v in counts.items()},
    }  # fmt: skip
    write_h5(
        out_h5,
        {
            "coords": ok[["left", "top"]].to_numpy(np.int64).reshape(-1, 2),
            "barcodes": np.array(ok.index.tolist(), dtype="S"),
            "dropped_barcodes": np.array(dropped.index.tolist(), dtype="S"),
            "dropped_reason": np.array(dropped["status"].tolist(), dtype="S"),
        },
        attrs,
    )
    log.info("%s: %d spot tiles of %g µm (%d px at %g µm/px)", sample, len(ok), tile_um, patch_size, target_mpp)
    return counts


def read_spot_coords(path: str | os.PathLike) -> tuple[np.ndarray, list[str], dict]:
    """(coords, barcodes, attrs) of a spots coords h5."""
    coords, attrs = read_coords(path)
    with h5py.File(path, "r") as f:
        if "barcodes" not in f:
            raise SpotsError(f"{path}: no 'barcodes' dataset; not a spots coords file (rerun the spots rule)")
        barcodes = [b.decode() for b in f["barcodes"][()]]
    if len(barcodes) != len(coords):
        raise SpotsError(f"{path}: {len(coords)} coords but {len(barcodes)} barcodes")
    return coords, barcodes, attrs


def barcodes_of_features(features_h5: str | os.PathLike, spots_h5: str | os.PathLike) -> tuple[np.ndarray, list[str]]:
    """(features, barcodes) of a spot features file, joined to the spots file by tile corner, not row order."""
    coords, barcodes, _ = read_spot_coords(spots_h5)
    by_corner = {(int(x), int(y)): b for (x, y), b in zip(coords, barcodes)}
    if len(by_corner) != len(barcodes):
        raise SpotsError(f"{spots_h5}: two spots share a tile corner; cannot join features by coords")
    with h5py.File(features_h5, "r") as f:
        feats = np.asarray(f["features"][()], dtype=np.float32)
        fcoords = np.asarray(f["coords"][()], dtype=np.int64).reshape(-1, 2)
    missing = [tuple(c) for c in fcoords.tolist() if tuple(c) not in by_corner]
    if missing:
        raise SpotsError(f"{features_h5}: {len(missing)} feature row(s) match no spot of {spots_h5}; re-extract")
    return feats, [by_corner[(int(x), int(y))] for x, y in fcoords]


def write_spot_tiles(image: str | os.PathLike, spots_h5: str | os.PathLike, out_h5: str | os.PathLike) -> int:
    """Write ``tiles`` (N, H, W, 3) uint8 at the target mpp, ``coords`` and ``barcodes`` (DESIGN §2 tiles)."""
    coords, barcodes, attrs = read_spot_coords(spots_h5)
    info = slide_info(image, fallback_mpp=attrs.get("positions_mpp"))
    plan = read_plan(info, float(attrs["magnification"]), int(attrs["patch_size"]), bool(attrs.get("upsample", False)))
    size = int(attrs["patch_size"])
    with atomic_path(out_h5) as tmp, h5py.File(tmp, "w") as f:
        tiles = f.create_dataset("tiles", (len(coords), size, size, 3), np.uint8, chunks=(1, size, size, 3))
        slide = open_slide(image)
        try:
            for i, (x, y) in enumerate(coords.tolist()):
                tiles[i] = read_patch(slide, x, y, plan)
        finally:
            slide.close()
        f["coords"] = coords
        f["barcodes"] = np.array(barcodes, dtype="S")
        for key, value in attrs.items():
            f.attrs[key] = value
    return len(coords)
