"""Synthetic 10x Visium sections: H&E whose local morphology drives spot expression by a known function.

Each section is a full-resolution pyramidal TIFF plus a Space Ranger ``outs/`` folder in the real
formats (``filtered_feature_bc_matrix.h5`` as Cell Ranger v3 writes it, ``spatial/tissue_positions.csv``
with a header, or the older headerless ``tissue_positions_list.csv``, ``scalefactors_json.json``,
hires/lowres PNGs), so the same reader serves the demo and GEO/spatialLIBD downloads.

Tissue uses the demo slide renderers (slidesnake/data/demo.py): solid sheets and glandular stroma in
regions of a smooth random field, with lymphoid aggregates (dense small round dark nuclei) on top.
A spot's morphology is the fraction of its 55 µm disk covered by each kind, d = (solid, glandular,
immune). Structured gene g has expected share softmax_g(b + W d) of the library (shares sum to one for
every spot, so library composition never leaks into the pure-noise genes), counts are Poisson with a
log-normal library size per spot. Noise genes have a constant share. The truth (d per spot, W, b,
gene kinds) is written beside the section.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp

from slidesnake.data.demo import (
    _glandular_stains,
    _solid_stains,
    _stable_int,
    _stain_luts,
    _tissue_mask,
)
from slidesnake.io.atomic import atomic_path, write_csv, write_json
from slidesnake.io.svs import write_tiff

log = logging.getLogger(__name__)

KINDS = ("solid", "glandular", "immune")
SPOT_DIAMETER_UM = 55.0
SPOT_PITCH_UM = 100.0
# Space Ranger's spot_diameter_fullres is the pixel span of a theoretical 65 µm spot (fiducial 1.5x that)
SR_SPOT_DIAMETER_UM = 65.0
HIRES_SIDE, LOWRES_SIDE = 2000, 600
_NUCLEOTIDES = np.array(list("ACGT"))


class DemoVisiumError(ValueError):
    """The synthetic Visium parameters (config key ``demo_visium``) cannot make valid sections."""


@dataclass(frozen=True)
class DemoVisiumConfig:
    """Shape of the synthetic sections; every file is a pure function of these fields.

    ``size_um`` is the side of the captured square; ``mpp`` the full-resolution image's µm per pixel.
    """

    n_sections: int = 4
    size_um: float = 2400.0
    mpp: float = 0.5
    n_genes: int = 200
    n_noise: int = 10
    library_size: float = 3000.0
    seed: int = 0


def section_ids(cfg: DemoVisiumConfig) -> list[str]:
    """Section (sample) names, cheap and pure: the DAG is built from them."""
    _validate(cfg)
    return [f"DEMOVIS-{i + 1}" for i in range(cfg.n_sections)]


def gene_table(cfg: DemoVisiumConfig) -> pd.DataFrame:
    """Per gene: name, kind (structured | noise), base log-share b and weights W over KINDS.

    Each structured gene answers mainly to one kind (effect 1.5-3 in log share, either sign), a little
    to the others; the first gene of each kind is its marker (largest positive effect).
    """
    _validate(cfg)
    rng = np.random.default_rng([cfg.seed, _stable_int("demo_visium:genes")])
    rows = []
    for g in range(cfg.n_genes):
        main = g % len(KINDS)
        w = rng.normal(0.0, 0.3, len(KINDS))
        w[main] = rng.uniform(1.5, 3.0) * (1 if g < len(KINDS) or rng.random() < 0.7 else -1)
        if g < len(KINDS):
            w[main] = 3.0
        rows.append({"gene": f"G{g:03d}{KINDS[main][:3].upper()}", "kind": "structured", "main": KINDS[main],
                     "base": rng.normal(0.0, 0.7), **{f"w_{k}": float(v) for k, v in zip(KINDS, w)}})  # fmt: skip
    for g in range(cfg.n_noise):
        rows.append({"gene": f"NOISE{g:02d}", "kind": "noise", "main": "", "base": rng.normal(0.0, 0.7),
                     **{f"w_{k}": 0.0 for k in KINDS}})  # fmt: skip
    table = pd.DataFrame(rows)
    table["marker"] = [i < len(KINDS) for i in range(len(table))]
    return table


def marker_genes(cfg: DemoVisiumConfig) -> list[str]:
    table = gene_table(cfg)
    return table.loc[table["marker"], "gene"].tolist()


def _validate(cfg: DemoVisiumConfig) -> None:
    if cfg.n_sections < 2:
        raise DemoVisiumError(f"demo_visium.n_sections={cfg.n_sections}: leave-one-section-out needs at least 2")
    if cfg.size_um < 6 * SPOT_PITCH_UM:
        raise DemoVisiumError(f"demo_visium.size_um={cfg.size_um}: must be at least {6 * SPOT_PITCH_UM:g} µm")
    if not 0.1 <= cfg.mpp <= 1.0:
        raise DemoVisiumError(f"demo_visium.mpp={cfg.mpp}: full-resolution images are 0.1-1.0 µm/px")
    if cfg.n_genes < len(KINDS) or cfg.n_noise < 0:
        raise DemoVisiumError(f"demo_visium.n_genes={cfg.n_genes}: need at least {len(KINDS)} structured genes")


# ------------------------------------------------------------------------------------------ rendering


def render_section(cfg: DemoVisiumConfig, section: str) -> tuple[np.ndarray, np.ndarray]:
    """(RGB image at cfg.mpp, (3, n, n) uint8 kind masks 0/255 for solid, glandular, immune)."""
    if section not in section_ids(cfg):
        raise DemoVisiumError(f"section {section!r} is not one of {section_ids(cfg)} for {cfg}")
    rng = np.random.default_rng([cfg.seed, _stable_int(f"demo_visium:{section}")])
    n = round(cfg.size_um / cfg.mpp)
    px = 1.0 / cfg.mpp
    tissue = _tissue_mask(rng, n)
    # regions: a smooth random field split at its median, features a few hundred µm across
    cells = max(4, round(cfg.size_um / 350.0))
    field = cv2.resize(rng.random((cells, cells)).astype(np.float32), (n, n), interpolation=cv2.INTER_CUBIC)
    solid = np.where(field > np.median(field), np.uint8(255), np.uint8(0))
    solid = cv2.bitwise_and(solid, tissue)
    gland = cv2.bitwise_and(cv2.bitwise_not(solid), tissue)
    h_lut, e_lut = _stain_luts(rng)
    h_s, e_s = _solid_stains(rng, solid, px)
    h_g, e_g = _glandular_stains(rng, gland, px)
    h = np.where(solid > 0, h_s, h_g)
    e = np.where(solid > 0, e_s, e_g)
    immune = np.zeros((n, n), np.uint8)
    for _ in range(int(rng.integers(3, 6))):
        centre = tuple(int(v) for v in rng.uniform(0.15, 0.85, 2) * n)
        axes = tuple(int(v) for v in rng.uniform(120, 260, 2) * px)
        cv2.ellipse(immune, centre, axes, float(rng.uniform(0, 180)), 0, 360, 255, -1)
    immune = cv2.bitwise_and(immune, tissue)
    _draw_lymphocytes(rng, h, e, immune, px)
    sigma = 0.35 * px
    h = cv2.bitwise_and(cv2.GaussianBlur(h, (0, 0), sigma), tissue)
    e = cv2.bitwise_and(cv2.GaussianBlur(e, (0, 0), sigma), tissue)
    rgb = cv2.merge([cv2.multiply(cv2.LUT(h, h_lut[c]), cv2.LUT(e, e_lut[c]), scale=1 / 255) for c in range(3)])
    return rgb, np.stack(
        [cv2.bitwise_and(solid, cv2.bitwise_not(immune)), cv2.bitwise_and(gland, cv2.bitwise_not(immune)), immune]
    )


def _draw_lymphocytes(rng: np.random.Generator, h: np.ndarray, e: np.ndarray, region: np.ndarray, px: float) -> None:
    """Lymphoid aggregate in place: densely packed small round very dark nuclei, little eosin."""
    e[region > 0] = np.minimum(e[region > 0], 14)
    h[region > 0] = 10
    ys, xs = np.nonzero(region[:: max(1, round(6 * px)), :: max(1, round(6 * px))])
    step = max(1, round(6 * px))
    points = np.stack([xs * step, ys * step], axis=1) + rng.integers(-2, 3, (len(xs), 2)) * round(px)
    for x, y in points.tolist():
        cv2.circle(h, (int(x), int(y)), max(1, round(rng.uniform(2.2, 3.0) * px)), int(rng.integers(200, 240)), -1)


# ------------------------------------------------------------------------------------------ spot grid


def spot_grid(cfg: DemoVisiumConfig, section: str) -> pd.DataFrame:
    """Every capture spot: barcode, array_row/col (Visium hex layout) and full-res pixel row/col."""
    rng = np.random.default_rng([cfg.seed, _stable_int(f"demo_visium:grid:{section}")])
    row_um = SPOT_PITCH_UM * math.sqrt(3) / 2
    margin = SPOT_PITCH_UM
    origin = margin + rng.uniform(0, SPOT_PITCH_UM / 2, 2)
    n_rows = int((cfg.size_um - 2 * margin) // row_um)
    n_cols = int((cfg.size_um - 2 * margin) // (SPOT_PITCH_UM / 2))
    rows = []
    for r in range(n_rows):
        for c in range(r % 2, n_cols, 2):
            x, y = origin[0] + c * SPOT_PITCH_UM / 2, origin[1] + r * row_um
            rows.append((r, c, y / cfg.mpp, x / cfg.mpp))
    grid = pd.DataFrame(rows, columns=["array_row", "array_col", "pxl_row_in_fullres", "pxl_col_in_fullres"])
    grid.insert(0, "barcode", [_barcode(r, c) for r, c in zip(grid["array_row"], grid["array_col"])])
    return grid


def _barcode(row: int, col: int) -> str:
    """A 16-nt Visium-like barcode, unique per (row, col)."""
    code = row * 128 + col
    digits = [(code >> (2 * i)) & 3 for i in range(8)]
    salt = [(_stable_int(f"bc{code}") >> (2 * i)) & 3 for i in range(8)]
    return "".join(_NUCLEOTIDES[salt + digits[::-1]]) + "-1"


def spot_densities(masks: np.ndarray, grid: pd.DataFrame, mpp: float) -> np.ndarray:
    """(spots, kinds) fraction of each spot's 55 µm disk covered by each tissue kind."""
    radius = SPOT_DIAMETER_UM / 2 / mpp
    r = int(math.ceil(radius))
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    disk = (xx**2 + yy**2) <= radius**2
    out = np.zeros((len(grid), masks.shape[0]))
    n = masks.shape[1]
    for i, (y, x) in enumerate(
        zip(grid["pxl_row_in_fullres"].round().astype(int), grid["pxl_col_in_fullres"].round().astype(int))
    ):
        y0, x0 = y - r, x - r
        if y0 < 0 or x0 < 0 or y + r + 1 > n or x + r + 1 > n:
            continue
        window = masks[:, y0 : y + r + 1, x0 : x + r + 1] > 0
        out[i] = (window & disk).sum(axis=(1, 2)) / disk.sum()
    return out


def simulate_counts(cfg: DemoVisiumConfig, section: str, densities: np.ndarray) -> np.ndarray:
    """(spots, genes) int32 counts: Poisson(library_s x share_g(d_s)), structured shares by softmax(b + W d)."""
    genes = gene_table(cfg)
    rng = np.random.default_rng([cfg.seed, _stable_int(f"demo_visium:counts:{section}")])
    weights = genes[[f"w_{k}" for k in KINDS]].to_numpy()
    structured = (genes["kind"] == "structured").to_numpy()
    noise_share = 0.1 if (~structured).any() else 0.0
    logits = genes["base"].to_numpy()[structured] + densities @ weights[structured].T
    logits -= logits.max(axis=1, keepdims=True)
    share = np.zeros((len(densities), len(genes)))
    soft = np.exp(logits)
    share[:, structured] = (1 - noise_share) * soft / soft.sum(axis=1, keepdims=True)
    base = np.exp(genes["base"].to_numpy()[~structured])
    share[:, ~structured] = noise_share * base / base.sum()
    library = cfg.library_size * rng.lognormal(0.0, 0.35, (len(densities), 1))
    return rng.poisson(library * share).astype(np.int32)


# -------------------------------------------------------------------------------------------- writing


def write_section(cfg: DemoVisiumConfig, section: str, folder: str | os.PathLike) -> Path:
    """Write one section: ``{section}_fullres.tif`` and ``outs/`` as Space Ranger lays it out, plus truth.

    Odd sections use Space Ranger >= 2's ``tissue_positions.csv`` (header), even ones the older
    headerless ``tissue_positions_list.csv``, so both layouts run through the reader on every demo.
    """
    folder = Path(folder)
    image, masks = render_section(cfg, section)
    grid = spot_grid(cfg, section)
    dens = spot_densities(masks, grid, cfg.mpp)
    tissue = dens.sum(axis=1)
    grid["in_tissue"] = (tissue >= 0.5).astype(int)
    inside = grid["in_tissue"].to_numpy() == 1
    counts = simulate_counts(cfg, section, dens[inside])
    genes = gene_table(cfg)
    barcodes = grid.loc[inside, "barcode"].tolist()
    outs = folder / "outs"
    spatial = outs / "spatial"
    spatial.mkdir(parents=True, exist_ok=True)
    write_tiff(folder / f"{section}_fullres.tif", image, mpp=cfg.mpp, downsamples=(1, 4, 16))
    write_10x_h5(outs / "filtered_feature_bc_matrix.h5", sp.csr_matrix(counts), barcodes,
                 [f"DEMO{i:05d}" for i in range(len(genes))], genes["gene"].tolist())  # fmt: skip
    positions = grid[["barcode", "in_tissue", "array_row", "array_col", "pxl_row_in_fullres", "pxl_col_in_fullres"]]
    positions = positions.assign(
        pxl_row_in_fullres=positions["pxl_row_in_fullres"].round().astype(int),
        pxl_col_in_fullres=positions["pxl_col_in_fullres"].round().astype(int),
    )
    index = section_ids(cfg).index(section)
    if index % 2 == 0:
        write_csv(spatial / "tissue_positions.csv", positions)
    else:
        with atomic_path(spatial / "tissue_positions_list.csv") as tmp:
            positions.to_csv(tmp, index=False, header=False)
    n = image.shape[0]
    scalefactors = {
        "spot_diameter_fullres": SR_SPOT_DIAMETER_UM / cfg.mpp,
        "fiducial_diameter_fullres": 1.5 * SR_SPOT_DIAMETER_UM / cfg.mpp,
        "tissue_hires_scalef": HIRES_SIDE / n,
        "tissue_lowres_scalef": LOWRES_SIDE / n,
        "regist_target_img_scalef": HIRES_SIDE / n,
    }
    write_json(spatial / "scalefactors_json.json", scalefactors)
    for name, side in (("tissue_hires_image.png", HIRES_SIDE), ("tissue_lowres_image.png", LOWRES_SIDE)):
        small = cv2.resize(image, (side, side), interpolation=cv2.INTER_AREA)
        with atomic_path(spatial / name) as tmp:
            if not cv2.imwrite(str(tmp) + ".png", cv2.cvtColor(small, cv2.COLOR_RGB2BGR)):
                raise OSError(f"{spatial / name}: PNG write failed")
            os.replace(str(tmp) + ".png", tmp)
    truth = pd.DataFrame(dens[inside], columns=[f"d_{k}" for k in KINDS])
    truth.insert(0, "barcode", barcodes)
    write_csv(folder / "demo_truth_spots.csv", truth)
    write_csv(folder / "demo_truth_genes.csv", genes)
    log.info("%s: %d spots (%d in tissue) x %d genes, image %d px", section, len(grid), inside.sum(), len(genes), n)
    return folder


def write_10x_h5(
    path: str | os.PathLike, counts: sp.csr_matrix, barcodes: list[str], ids: list[str], names: list[str]
) -> None:
    """A Cell/Space Ranger v3 feature-barcode matrix h5 (genes x spots CSC), as ``scanpy.read_10x_h5`` reads it."""
    csc = sp.csc_matrix(sp.csr_matrix(counts).T)
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        m = f.create_group("matrix")
        m.create_dataset("data", data=csc.data.astype(np.int32), compression="gzip")
        m.create_dataset("indices", data=csc.indices.astype(np.int64), compression="gzip")
        m.create_dataset("indptr", data=csc.indptr.astype(np.int64))
        m.create_dataset("shape", data=np.array(csc.shape, dtype=np.int32))
        m.create_dataset("barcodes", data=np.array(barcodes, dtype="S"))
        feats = m.create_group("features")
        feats.create_dataset("id", data=np.array(ids, dtype="S"))
        feats.create_dataset("name", data=np.array(names, dtype="S"))
        feats.create_dataset("feature_type", data=np.array(["Gene Expression"] * len(ids), dtype="S"))
        feats.create_dataset("genome", data=np.array(["GRCh38"] * len(ids), dtype="S"))
        feats.create_dataset("_all_tag_keys", data=np.array(["genome"], dtype="S"))
        f.attrs["filetype"] = "matrix"
        f.attrs["software_version"] = "slidesnake demo_visium"
        f.attrs["library_ids"] = np.array([b"demo"])
        f.attrs["chemistry_description"] = "Spatial 3' v1"


def demo_truth(folder: str | os.PathLike) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(spots truth indexed by barcode, genes truth indexed by gene) of a written section."""
    folder = Path(folder)
    return (
        pd.read_csv(folder / "demo_truth_spots.csv").set_index("barcode"),
        pd.read_csv(folder / "demo_truth_genes.csv").set_index("gene"),
    )


def write_markers(cfg: DemoVisiumConfig, path: str | os.PathLike) -> None:
    write_json(path, {"markers": marker_genes(cfg)})
