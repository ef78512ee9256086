"""10x Visium outputs -> AnnData (``.h5ad``) with ``obsm["spatial"]`` in full-resolution pixel (x, y).

Accepts Space Ranger folders, GEO's flat prefixed files (``GSM…_C73A1_matrix.mtx.gz``) and the
spatialLIBD layout: the matrix as an mtx triplet or ``filtered_feature_bc_matrix.h5``, positions with
(``tissue_positions.csv``, Space Ranger >= 2) or without (``tissue_positions_list.csv``) a header.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import anndata as ad
import cv2
import h5py
import numpy as np
import pandas as pd
import scipy.io
import scipy.sparse as sp

from slidesnake.errors import InputError
from slidesnake.io.atomic import atomic_path

log = logging.getLogger(__name__)

POSITION_COLUMNS = ("barcode", "in_tissue", "array_row", "array_col", "pxl_row_in_fullres", "pxl_col_in_fullres")
SCALEFACTOR_KEYS = ("spot_diameter_fullres", "tissue_hires_scalef", "tissue_lowres_scalef")
SPOT_PITCH_UM = 100.0
_IMAGE_SUFFIXES = (".tif", ".tiff", ".tif.gz", ".tiff.gz", ".svs", ".btf")


class VisiumError(InputError):
    """A Visium folder lacks a needed file or its files disagree."""


@dataclass(frozen=True)
class VisiumFiles:
    """Paths of one sample's Visium outputs (matrix as h5 or as an mtx triplet)."""

    positions: Path
    scalefactors: Path | None = None
    matrix_h5: Path | None = None
    matrix_mtx: Path | None = None
    barcodes: Path | None = None
    features: Path | None = None
    image: Path | None = None
    hires: Path | None = None
    lowres: Path | None = None


def _base(path: Path) -> str:
    name = path.name.lower()
    return name[:-3] if name.endswith(".gz") else name


def find_visium_files(folder: str | Path, sample: str = "") -> VisiumFiles:
    """Locate one sample's files under ``folder`` by name suffix; ``sample`` filters names/paths containing it."""
    root = Path(folder)
    files = [p for p in sorted(root.rglob("*")) if p.is_file() and sample in str(p.relative_to(root))]

    def pick(*suffixes: str) -> Path | None:
        found = [p for p in files if _base(p).endswith(suffixes)]
        if len(found) > 1:
            found = [p for p in found if "raw" not in p.name.lower()] or found
        return found[0] if found else None

    positions = pick("tissue_positions_list.csv", "tissue_positions.csv", "tissue_positions_list.txt")
    if positions is None:
        raise VisiumError(f"{root}: no tissue_positions(_list).csv for sample {sample!r}")
    image = next(
        (p for p in files if p.name.lower().endswith(_IMAGE_SUFFIXES) and "aligned" not in p.name.lower()), None
    )
    return VisiumFiles(
        positions=positions,
        scalefactors=pick("scalefactors_json.json"),
        matrix_h5=pick("filtered_feature_bc_matrix.h5"),
        matrix_mtx=pick("matrix.mtx"),
        barcodes=pick("barcodes.tsv"),
        features=pick("features.tsv", "genes.tsv"),
        image=image,
        hires=pick("tissue_hires_image.png"),
        lowres=pick("tissue_lowres_image.png"),
    )


def read_positions(path: str | Path) -> pd.DataFrame:
    """Spot positions indexed by barcode, whether or not the file has a header row."""
    df = pd.read_csv(path, header=None, dtype=str)
    if df.iloc[0, 0] == "barcode":
        df = df.iloc[1:]
    if df.shape[1] != len(POSITION_COLUMNS):
        raise VisiumError(f"{path}: {df.shape[1]} columns, expected {len(POSITION_COLUMNS)} {POSITION_COLUMNS}")
    df.columns = list(POSITION_COLUMNS)
    df = df.set_index("barcode")
    return df.astype({c: "int64" for c in POSITION_COLUMNS[1:4]}).astype(
        {"pxl_row_in_fullres": "float64", "pxl_col_in_fullres": "float64"}
    )


def read_10x_h5(path: str | Path) -> tuple[sp.csr_matrix, list[str], list[str], list[str]]:
    """(spots x genes CSR counts, barcodes, gene ids, gene symbols) from a Cell Ranger v3 ``.h5``."""
    with h5py.File(path, "r") as f:
        if "matrix" not in f:
            raise VisiumError(f"{path}: no 'matrix' group; only the Cell/Space Ranger v3 h5 layout is supported")
        m = f["matrix"]
        n_genes, n_spots = (int(x) for x in m["shape"][:])
        # stored CSC over (genes x spots) == CSR over (spots x genes)
        counts = sp.csr_matrix((m["data"][:], m["indices"][:], m["indptr"][:]), shape=(n_spots, n_genes))
        decode = np.vectorize(lambda b: b.decode())
        barcodes = list(decode(m["barcodes"][:]))
        ids = list(decode(m["features/id"][:]))
        names = list(decode(m["features/name"][:]))
    return counts, barcodes, ids, names


def _lines(path: Path) -> list[list[str]]:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt") as fh:
        return [line.rstrip("\n").split("\t") for line in fh if line.strip()]


def read_mtx_triplet(
    matrix: Path, barcodes: Path, features: Path
) -> tuple[sp.csr_matrix, list[str], list[str], list[str]]:
    """(spots x genes CSR counts, barcodes, gene ids, gene symbols) from ``matrix.mtx``/barcodes/features."""
    opener = gzip.open if matrix.name.endswith(".gz") else open
    with opener(matrix, "rb") as fh:
        counts = sp.csr_matrix(scipy.io.mmread(fh).T)
    codes = [row[0] for row in _lines(barcodes)]
    feats = _lines(features)
    ids = [row[0] for row in feats]
    names = [row[1] if len(row) > 1 else row[0] for row in feats]
    if counts.shape != (len(codes), len(ids)):
        raise VisiumError(
            f"{matrix}: shape {counts.shape[::-1]} (genes x spots) disagrees with {len(ids)} features "
            f"in {features.name} and {len(codes)} barcodes in {barcodes.name}"
        )
    return counts, codes, ids, names


def read_visium(files: VisiumFiles, sample: str = "sample") -> ad.AnnData:
    """Build the AnnData: X counts (spots x genes), obs positions, ``obsm["spatial"]`` = full-res (x, y)."""
    if files.matrix_h5 is not None:
        counts, barcodes, ids, names = read_10x_h5(files.matrix_h5)
    elif files.matrix_mtx and files.barcodes and files.features:
        counts, barcodes, ids, names = read_mtx_triplet(files.matrix_mtx, files.barcodes, files.features)
    else:
        raise VisiumError(f"sample {sample!r}: no filtered_feature_bc_matrix.h5 nor matrix.mtx+barcodes+features")
    positions = read_positions(files.positions)
    missing = [b for b in barcodes if b not in positions.index]
    if missing:
        raise VisiumError(f"{files.positions}: {len(missing)} matrix barcode(s) have no position, e.g. {missing[0]}")
    if len(set(barcodes)) != len(barcodes):
        raise VisiumError(
            f"{files.matrix_h5 or files.barcodes}: {len(barcodes) - len(set(barcodes))} duplicate barcode(s)"
        )
    # every table is joined by barcode, never by row order
    obs = positions.loc[barcodes, ["in_tissue", "array_row", "array_col"]].copy()
    # symbols repeat (e.g. two Ensembl ids for one gene): suffix -1, -2 as scanpy does
    var = pd.DataFrame({"gene_ids": ids}, index=ad.utils.make_index_unique(pd.Index(names)))
    adata = ad.AnnData(X=counts.astype(np.float32), obs=obs, var=var)
    adata.obsm["spatial"] = positions.loc[barcodes, ["pxl_col_in_fullres", "pxl_row_in_fullres"]].to_numpy()
    if files.scalefactors is None:
        raise VisiumError(
            f"sample {sample!r}: no scalefactors_json.json beside {files.positions}; Space Ranger writes it in "
            "outs/spatial/ — download it with the sample (spot size and image scales come from it)"
        )
    scalefactors = json.loads(files.scalefactors.read_text())
    missing_keys = [k for k in SCALEFACTOR_KEYS if k not in scalefactors]
    if missing_keys:
        raise VisiumError(f"{files.scalefactors}: missing scale factor(s) {missing_keys}")
    images = {}
    for key, path in (("hires", files.hires), ("lowres", files.lowres)):
        if path is not None and f"tissue_{key}_scalef" in scalefactors:
            images[key] = read_png(path)
    if not images:
        log.warning("%s: no tissue_hires/lowres_image.png; spatial plots draw spots without the image", sample)
    adata.uns["spatial"] = {
        sample: {
            "images": images,
            "scalefactors": scalefactors,
            "metadata": {
                "source_image_path": str(files.image) if files.image else "",
                "software_version": "",
                "chemistry_description": "",
            },
        }
    }
    mpp = pitch_mpp(positions)
    if mpp is None:
        log.warning("%s: no two spots of %s are array neighbours; pixel size not derived", sample, files.positions)
    else:
        adata.uns["spatial"][sample]["pitch_mpp"] = mpp
    log.info("%s: %d spots x %d genes, %s µm/px from the spot pitch", sample, adata.n_obs, adata.n_vars, mpp)
    return adata


def read_png(path: str | os.PathLike) -> np.ndarray:
    """An RGB uint8 image (scanpy's reader stores float 0-1; imshow renders either)."""
    bgr = cv2.imread(os.fspath(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise VisiumError(f"{path}: not a readable PNG image")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def pitch_mpp(positions: pd.DataFrame) -> float | None:
    """µm per full-resolution pixel from the 100 µm centre-to-centre distance of neighbouring spots
    (all capture spots of the positions file), or None when no two spots are array neighbours.

    Neighbours are found by array coordinates (same array_row, array_col + 2), not by pixel
    distance, so missing spots do not bias it; the median over pairs is robust to outliers.
    """
    rows = positions["array_row"].to_numpy()
    cols = positions["array_col"].to_numpy()
    xy = positions[["pxl_col_in_fullres", "pxl_row_in_fullres"]].to_numpy(dtype=np.float64)
    key = {(int(r), int(c)): i for i, (r, c) in enumerate(zip(rows, cols))}
    dists = [np.hypot(*(xy[key[(r, c + 2)]] - xy[i])) for (r, c), i in key.items() if (r, c + 2) in key]
    return float(SPOT_PITCH_UM / np.median(dists)) if dists else None


def write_h5ad(adata: ad.AnnData, path: str | Path) -> None:
    """Write an AnnData atomically (temp file beside the target, then rename)."""
    with atomic_path(path) as tmp:
        adata.write_h5ad(tmp)
