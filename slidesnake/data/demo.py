"""The embedded synthetic demo cohort: deterministic H&E-like Aperio slides plus clinical and mutation tables.

The default config runs the whole pipeline offline on this cohort, so every slide is a real pyramidal
SVS that OpenSlide reads like scanner output, the two classes differ visibly (colour and texture), one
slide is a native-20x scan and one has no tissue, so those code paths run on every demo run.

A harder variant (``config/cohorts/demo_hard.yaml``) uses the same generator with three more knobs,
whose defaults leave the default demo byte-identical: ``focus_fraction`` < 1 draws the class
morphology only in small foci covering that share of the tissue, on a stroma background that both
classes share (so the class lives in a minority of patches, as a tumour focus in a biopsy);
``stain_jitter`` scales the per-slide stain variation; ``label_noise`` records the wrong class for
that share of patients (their slides still show the true one).

Slides are rendered as haematoxylin and eosin concentration maps (uint8, OD x 100) and turned into RGB
through per-slide Beer-Lambert look-up tables, so stain jitter costs two 256-entry tables, not a
per-pixel exponential.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from slidesnake.errors import ConfigError, InputError
from slidesnake.io.atomic import write_csv, write_parquet
from slidesnake.io.svs import GLASS_RGB, write_svs

log = logging.getLogger(__name__)

CLASSES: tuple[str, str] = ("solid", "glandular")
SHEET_COLUMNS = ("slide_id", "case_id", "path", "label", "md5", "source", "scan")
GENES = ("TP53", "EGFR", "KRAS", "ALK", "STK11", "KEAP1")
MPP_40X = 0.25
DOWNSAMPLES = (1, 4, 16)

# Optical-density directions (R, G, B): Ruifrok & Johnston's haematoxylin, and an eosin with more blue
# absorbance than theirs, which renders pink rather than magenta on screen.
_H_VECTOR = np.array([0.650, 0.704, 0.286])
_E_VECTOR = np.array([0.05, 0.85, 0.45])
# Stain maps hold OD x 100 as uint8, so 1.0 OD of haematoxylin is the value 100.
_OD_SCALE = 100.0
_TEXTURE_TILE = 512
# Per gene: (exon count, exons where the demo places its variants), after the genes' real hotspots.
_GENE_EXONS = {
    "TP53": (11, (5, 6, 7, 8)),
    "EGFR": (28, (18, 19, 20, 21)),
    "KRAS": (6, (2, 3)),
    "ALK": (29, (20, 22, 23, 25)),
    "STK11": (10, (1, 4, 6)),
    "KEAP1": (6, (2, 3, 4)),
}
_GENE_RATES = {"EGFR": 0.15, "KRAS": 0.3, "ALK": 0.1, "STK11": 0.2, "KEAP1": 0.2}
_TP53_AGREEMENT = 0.9
_VARIANT_CLASSES = ("Missense_Mutation", "Nonsense_Mutation", "Frame_Shift_Del", "Splice_Site", "In_Frame_Del")
_EXOME_MB = 38.0
_RACES = ("white", "asian", "black or african american", "not reported")


class DemoConfigError(ConfigError):
    """The demo cohort parameters (config key ``demo``) cannot make a valid cohort."""


class UnknownDemoSlideError(InputError):
    """A slide id that the demo sheet for this config does not contain."""


@dataclass(frozen=True)
class DemoConfig:
    """Shape of the demo cohort; every output is a pure function of these fields.

    ``size`` is the level-0 side in pixels of a 40x slide (0.25 um/px), so 8192 is 2 mm x 2 mm of glass.
    ``focus_fraction``: share of the tissue area showing the class morphology (1 = all of it; below
    1, small foci of 60-120 um radius on a shared stroma background). ``stain_jitter``: multiplies
    the per-slide stain-vector noise and intensity spread. ``label_noise``: share of patients whose
    recorded label is the other class.
    """

    n_patients: int = 10
    slides_per_patient: int = 2
    size: int = 8192
    seed: int = 0
    focus_fraction: float = 1.0
    stain_jitter: float = 1.0
    label_noise: float = 0.0


# ---------------------------------------------------------------------------------------------- sheet


def demo_sheet(cfg: DemoConfig, slide_dir: str | os.PathLike) -> pd.DataFrame:
    """The slide sheet the DAG is built from: pure and cheap (no rendering, no file I/O).

    One 40x slide per patient slot, one of them re-scanned as native 20x, plus one extra no-tissue
    slide for an existing patient (with that patient's label). All columns are str.
    """
    _validate(cfg)
    labels = _patient_labels(cfg)
    rng = np.random.default_rng([cfg.seed, _stable_int("sheet")])
    rows = []
    for case_id, label in labels.items():
        for j in range(1, cfg.slides_per_patient + 1):
            rows.append({"slide_id": f"{case_id}-S{j}", "case_id": case_id, "label": label, "scan": "40x"})
    rows[int(rng.integers(len(rows)))]["scan"] = "20x"
    empty_case = list(labels)[int(rng.integers(len(labels)))]
    rows.append(
        {
            "slide_id": f"{empty_case}-S{cfg.slides_per_patient + 1}",
            "case_id": empty_case,
            "label": labels[empty_case],
            "scan": "empty",
        }
    )
    sheet = pd.DataFrame(rows)
    sheet["path"] = [str(Path(slide_dir) / f"{s}.svs") for s in sheet["slide_id"]]
    sheet["md5"] = ""
    sheet["source"] = "demo"
    sheet = sheet.sort_values("slide_id", ignore_index=True)
    return sheet[list(SHEET_COLUMNS)].astype(str)


def _patient_labels(cfg: DemoConfig) -> dict[str, str]:
    """case_id -> recorded class: the true class, except for a ``label_noise`` share of patients."""
    labels = _true_classes(cfg)
    n_flip = round(cfg.label_noise * cfg.n_patients)
    if n_flip:
        rng = np.random.default_rng([cfg.seed, _stable_int("label_noise")])
        for case_id in rng.choice(sorted(labels), n_flip, replace=False).tolist():
            labels[case_id] = CLASSES[1 - CLASSES.index(labels[case_id])]
    return labels


def _true_classes(cfg: DemoConfig) -> dict[str, str]:
    """case_id -> the class its slides show, balanced between the two classes and shuffled by the seed."""
    rng = np.random.default_rng([cfg.seed, _stable_int("labels")])
    order = rng.permutation(cfg.n_patients)
    return {f"DEMO-{i + 1:04d}": CLASSES[int(order[i]) % 2] for i in range(cfg.n_patients)}


def _validate(cfg: DemoConfig) -> None:
    if cfg.n_patients < 2:
        raise DemoConfigError(f"demo.n_patients={cfg.n_patients}: need at least 2 patients for 2 classes")
    if cfg.slides_per_patient < 1:
        raise DemoConfigError(f"demo.slides_per_patient={cfg.slides_per_patient}: must be at least 1")
    if cfg.size < 512 or cfg.size % 2:
        raise DemoConfigError(f"demo.size={cfg.size}: must be an even number of pixels >= 512")
    if not 0 < cfg.focus_fraction <= 1:
        raise DemoConfigError(f"demo.focus_fraction={cfg.focus_fraction}: must be in (0, 1] (1 = all tissue)")
    if cfg.stain_jitter < 0:
        raise DemoConfigError(f"demo.stain_jitter={cfg.stain_jitter}: must be >= 0 (1 = the default spread)")
    if not 0 <= cfg.label_noise < 0.5:
        raise DemoConfigError(f"demo.label_noise={cfg.label_noise}: must be in [0, 0.5)")


def _stable_int(text: str) -> int:
    """A process-independent 64-bit integer for seeding (Python's hash() is salted per process)."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")


# --------------------------------------------------------------------------------------------- slides


def write_demo_slide(cfg: DemoConfig, slide_id: str, path: str | os.PathLike) -> Path:
    """Render one demo slide and write it atomically as an Aperio SVS (3 levels + thumbnail)."""
    image, mpp = render_demo_slide(cfg, slide_id)
    log.info("writing demo slide %s (%dx%d px, %.2f um/px) to %s", slide_id, image.shape[1], image.shape[0], mpp, path)
    return write_svs(path, image, mpp=mpp, app_mag=10.0 / mpp, downsamples=DOWNSAMPLES)


def render_demo_slide(cfg: DemoConfig, slide_id: str) -> tuple[np.ndarray, float]:
    """Level-0 RGB pixels and mpp of one demo slide, deterministic in (cfg, slide_id).

    Every slide covers the same physical area: a 20x scan has half the pixels per side of a 40x one.
    """
    sheet = demo_sheet(cfg, "").set_index("slide_id")
    if slide_id not in sheet.index:
        raise UnknownDemoSlideError(
            f"slide {slide_id!r} is not in the demo sheet for {cfg}; use one of {', '.join(sheet.index)}"
        )
    row = sheet.loc[slide_id]
    rng = np.random.default_rng([cfg.seed, _stable_int(slide_id)])
    mpp = 2 * MPP_40X if row["scan"] == "20x" else MPP_40X
    n = round(cfg.size * MPP_40X / mpp)
    if row["scan"] == "empty":
        return _render_glass(rng, n), mpp
    label = _true_classes(cfg)[row["case_id"]]  # the slide shows the true class, whatever was recorded
    return _render_tissue(rng, n, 1.0 / mpp, label, cfg.focus_fraction, cfg.stain_jitter), mpp


def _render_glass(rng: np.random.Generator, n: int) -> np.ndarray:
    """Bare glass: faint grey noise and a few dust specks, all unsaturated so no tissue is found."""
    noise = rng.integers(0, 5, (_TEXTURE_TILE, _TEXTURE_TILE), dtype=np.uint8)
    grain = _tiled(noise, n, rng)
    image = np.empty((n, n, 3), np.uint8)
    for c in range(3):
        image[..., c] = cv2.add(grain, GLASS_RGB[c] - 2)  # glass +- 2 grey levels
    for _ in range(int(rng.integers(3, 8))):
        centre = tuple(int(v) for v in rng.integers(0, n, 2))
        radius = int(rng.integers(2, max(3, n // 400)))
        shade = int(rng.integers(200, 225))
        cv2.circle(image, centre, radius, (shade, shade, shade), -1)
    return image


def _render_tissue(
    rng: np.random.Generator, n: int, px: float, label: str, focus_fraction: float = 1.0, stain_jitter: float = 1.0
) -> np.ndarray:
    """H&E-like tissue islands on glass; ``px`` is pixels per micrometre.

    With ``focus_fraction`` < 1 the class morphology shows only inside small foci; the rest of the
    tissue is the stroma both classes share.
    """
    mask = _tissue_mask(rng, n)
    h_lut, e_lut = _stain_luts(rng, stain_jitter)
    if label == "solid":
        h, e = _solid_stains(rng, mask, px)
    else:
        h, e = _glandular_stains(rng, mask, px)
    if focus_fraction < 1:
        foci = _foci_mask(rng, mask, focus_fraction, px)
        h_bg, e_bg = _stroma_stains(rng, mask, px)
        h, e = np.where(foci, h, h_bg), np.where(foci, e, e_bg)
    sigma = 0.35 * px
    h = cv2.bitwise_and(cv2.GaussianBlur(h, (0, 0), sigma), mask)
    e = cv2.bitwise_and(cv2.GaussianBlur(e, (0, 0), sigma), mask)
    # Beer-Lambert transmission factorises per channel: glass * exp(-h H) * exp(-e E)
    channels = [cv2.multiply(cv2.LUT(h, h_lut[c]), cv2.LUT(e, e_lut[c]), scale=1 / 255) for c in range(3)]
    return cv2.merge(channels)


def _stain_luts(rng: np.random.Generator, jitter: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Two (3, 256) uint8 tables with this slide's stain jitter: 255 x haematoxylin transmission, glass x eosin's.

    ``jitter`` scales the spread (stain-vector noise sd 0.03, intensity 0.9-1.1 at 1).
    """
    levels = np.arange(256, dtype=np.float64)[:, None] / _OD_SCALE
    spread = min(0.1 * jitter, 0.6)
    tables = []
    for base, white in ((_H_VECTOR, 255.0), (_E_VECTOR, np.asarray(GLASS_RGB, np.float64))):
        v = np.clip(base + rng.normal(0.0, 0.03 * jitter, 3), 0.01, None)
        v = v / np.linalg.norm(v) * rng.uniform(1 - spread, 1 + spread)
        table = np.clip(np.rint(white * np.exp(-levels * v)), 0, 255).astype(np.uint8)
        tables.append(np.ascontiguousarray(table.T))
    return tables[0], tables[1]


# ------------------------------------------------------------------------------------- tissue geometry


def _tissue_mask(rng: np.random.Generator, n: int) -> np.ndarray:
    """uint8 0/255: one large ragged island (about half the slide), 0-2 corner fragments, 1-2 holes.

    The main island alone is bigger than the default minimum tissue area (100 x (128 um)^2) on a
    2 mm slide, and nothing touches the border.
    """
    mask = np.zeros((n, n), np.uint8)
    centre = n / 2 + rng.uniform(-0.02, 0.02, 2) * n
    radius = 0.40 * n
    cv2.fillPoly(mask, [_ragged_polygon(rng, centre, radius, n, margin=0.03 * n)], 255)
    corners = rng.permutation([(0.12, 0.12), (0.88, 0.12), (0.12, 0.88), (0.88, 0.88)])
    for corner in corners[: int(rng.integers(0, 3))]:
        c = np.asarray(corner) * n + rng.uniform(-0.02, 0.02, 2) * n
        cv2.fillPoly(mask, [_ragged_polygon(rng, c, rng.uniform(0.05, 0.07) * n, n, margin=0.03 * n)], 255)
    for _ in range(int(rng.integers(1, 3))):
        angle, dist = rng.uniform(0, 2 * math.pi), rng.uniform(0.15, 0.6) * radius
        c = centre + dist * np.array([math.cos(angle), math.sin(angle)])
        cv2.fillPoly(mask, [_ragged_polygon(rng, c, rng.uniform(0.06, 0.09) * n, n, margin=0.03 * n)], 0)
    return mask


def _ragged_polygon(rng: np.random.Generator, centre: np.ndarray, radius: float, n: int, margin: float) -> np.ndarray:
    """int32 (K, 2) polygon: a circle bent by low harmonics plus fine jitter, shrunk to stay inside the slide."""
    theta = np.linspace(0, 2 * math.pi, 360, endpoint=False)
    r = np.ones_like(theta)
    for m in range(2, 7):
        r += rng.uniform(0.02, 0.12) / (m - 1) * np.cos(m * theta + rng.uniform(0, 2 * math.pi))
    jitter = np.convolve(np.pad(rng.normal(0, 1, theta.size), 4, mode="wrap"), np.ones(5) / 5, mode="same")[4:-4]
    r = radius * (r + 0.02 * jitter)
    offsets = np.stack([r * np.cos(theta), r * np.sin(theta)], axis=1)
    centre = np.clip(centre, margin + 1, n - margin - 1)
    room = np.minimum(centre - margin, n - margin - centre)
    reach = np.abs(offsets).max(axis=0)
    offsets *= min(1.0, *(room / reach))
    return np.rint(centre + offsets).astype(np.int32)


# ------------------------------------------------------------------------------------ class morphology


def _solid_stains(rng: np.random.Generator, mask: np.ndarray, px: float) -> tuple[np.ndarray, np.ndarray]:
    """Sheets of tumour cells: densely packed small dark nuclei, thin pink fibrous septa between nests."""
    n = mask.shape[0]
    septa = _septa(rng, n)
    fibres = _fibre_texture(rng, n, px)
    e = np.where(septa, np.uint8(rng.integers(55, 70)), np.uint8(rng.integers(22, 32)))
    e = cv2.add(e, fibres // 3)
    h = np.where(septa, np.uint8(6), np.uint8(rng.integers(16, 24)))
    spacing = rng.uniform(9.0, 11.0) * px
    points = _jittered_hex_grid(rng, n, spacing, 0.25)
    keep = (mask[points[:, 1], points[:, 0]] > 0) & ~septa[points[:, 1], points[:, 0]]
    keep &= rng.random(len(points)) > 0.08
    points = points[keep]
    major = rng.uniform(3.0, 4.5, len(points)) * px
    minor = np.rint(major * rng.uniform(0.7, 1.0, len(points))).astype(int)
    major = np.rint(major).astype(int)
    angle = rng.uniform(0, 180, len(points))
    value = rng.integers(150, 200, len(points))
    for (x, y), a, b, t, v in zip(points.tolist(), major.tolist(), minor.tolist(), angle.tolist(), value.tolist()):
        cv2.ellipse(h, (x, y), (a, b), t, 0, 360, v, -1)
    h = cv2.subtract(h, _speckle(rng, n, 30))
    return h, e


def _foci_mask(rng: np.random.Generator, mask: np.ndarray, fraction: float, px: float) -> np.ndarray:
    """bool (n, n): random discs of 60-120 um radius centred in tissue until they cover ``fraction`` of it."""
    n = mask.shape[0]
    tissue = np.flatnonzero(mask > 0)
    foci = np.zeros((n, n), np.uint8)
    target = fraction * tissue.size
    for _ in range(10_000):
        if cv2.countNonZero(cv2.bitwise_and(foci, mask)) >= target:
            break
        y, x = divmod(int(tissue[rng.integers(tissue.size)]), n)
        cv2.circle(foci, (x, y), max(1, round(rng.uniform(60.0, 120.0) * px)), 255, -1)
    return (foci > 0) & (mask > 0)


def _stroma_stains(
    rng: np.random.Generator, mask: np.ndarray, px: float, speckle: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Eosin-rich fibrous stroma with sparse spindle nuclei (the glandular class's stroma, without glands)."""
    n = mask.shape[0]
    fibres = _fibre_texture(rng, n, px)
    e = cv2.add(np.full((n, n), int(rng.integers(50, 65)), np.uint8), fibres)
    h = np.full((n, n), 6, np.uint8)
    stroma = _jittered_hex_grid(rng, n, rng.uniform(28.0, 34.0) * px, 0.5)
    stroma = stroma[mask[stroma[:, 1], stroma[:, 0]] > 0]
    major = np.rint(rng.uniform(5.0, 8.0, len(stroma)) * px).astype(int)
    minor = np.rint(rng.uniform(1.2, 2.0, len(stroma)) * px).astype(int)
    angle = rng.uniform(0, 180, len(stroma))
    value = rng.integers(110, 140, len(stroma))
    for (x, y), a, b, t, v in zip(stroma.tolist(), major.tolist(), minor.tolist(), angle.tolist(), value.tolist()):
        cv2.ellipse(h, (x, y), (a, b), t, 0, 360, v, -1)
    if speckle:
        h = cv2.subtract(h, _speckle(rng, n, 20))
    return h, e


def _glandular_stains(rng: np.random.Generator, mask: np.ndarray, px: float) -> tuple[np.ndarray, np.ndarray]:
    """Eosin-rich stroma with sparse spindle nuclei around round glands lined by large pale nuclei."""
    n = mask.shape[0]
    h, e = _stroma_stains(rng, mask, px, speckle=False)
    glands = _jittered_hex_grid(rng, n, rng.uniform(150.0, 180.0) * px, 0.2)
    glands = glands[(mask[glands[:, 1], glands[:, 0]] > 0) & (rng.random(len(glands)) < 0.8)]
    for x, y in glands.tolist():
        _draw_gland(rng, h, e, (x, y), px)
    h = cv2.subtract(h, _speckle(rng, n, 20))
    return h, e


def _draw_gland(rng: np.random.Generator, h: np.ndarray, e: np.ndarray, centre: tuple[int, int], px: float) -> None:
    """One gland in place: epithelial ring, empty lumen, and columnar vesicular nuclei along the ring."""
    lumen = rng.uniform(22.0, 45.0) * px
    aspect = rng.uniform(0.75, 1.0)
    tilt = float(rng.uniform(0, 180))
    wall = rng.uniform(14.0, 20.0) * px
    outer = (round(lumen + wall), round((lumen + wall) * aspect))
    inner = (round(lumen), round(lumen * aspect))
    cv2.ellipse(e, centre, outer, tilt, 0, 360, int(rng.integers(30, 40)), -1)
    cv2.ellipse(h, centre, outer, tilt, 0, 360, int(rng.integers(12, 18)), -1)
    cv2.ellipse(e, centre, inner, tilt, 0, 360, 4, -1)
    cv2.ellipse(h, centre, inner, tilt, 0, 360, 0, -1)
    ring = lumen + 0.5 * wall
    count = max(6, round(2 * math.pi * ring / (rng.uniform(9.0, 12.0) * px)))
    rad = math.radians(tilt)
    for k in range(count):
        phi = 2 * math.pi * (k + rng.uniform(-0.2, 0.2)) / count
        lx, ly = ring * math.cos(phi), ring * aspect * math.sin(phi)
        x = centre[0] + lx * math.cos(rad) - ly * math.sin(rad)
        y = centre[1] + lx * math.sin(rad) + ly * math.cos(rad)
        axes = (round(rng.uniform(5.5, 7.5) * px), round(rng.uniform(3.5, 4.5) * px))
        angle = math.degrees(math.atan2(y - centre[1], x - centre[0]))
        xy = (round(x), round(y))
        cv2.ellipse(h, xy, axes, angle, 0, 360, int(rng.integers(55, 75)), -1)
        cv2.ellipse(h, xy, axes, angle, 0, 360, 105, max(1, round(0.8 * px)))
        cv2.circle(h, xy, max(1, round(0.9 * px)), 130, -1)


def _jittered_hex_grid(rng: np.random.Generator, n: int, spacing: float, jitter: float) -> np.ndarray:
    """int (K, 2) x, y points on a hexagonal grid over [0, n)^2, each moved by up to ``jitter`` x spacing."""
    ys = np.arange(spacing / 2, n, spacing * math.sqrt(3) / 2)
    xs = np.arange(spacing / 2, n, spacing)
    gx, gy = np.meshgrid(xs, ys)
    gx = gx + (np.arange(len(ys))[:, None] % 2) * spacing / 2
    points = np.stack([gx.ravel(), gy.ravel()], axis=1)
    points += rng.uniform(-jitter, jitter, points.shape) * spacing
    return np.clip(np.rint(points), 0, n - 1).astype(np.int64)


def _septa(rng: np.random.Generator, n: int) -> np.ndarray:
    """bool (n, n): thin winding bands (a level set of smooth noise) that split solid sheets into nests."""
    coarse = cv2.GaussianBlur(rng.random((96, 96)).astype(np.float32), (0, 0), 4)
    coarse = (coarse - coarse.min()) / (np.ptp(coarse) + 1e-9)
    band = (np.abs(coarse - 0.5) < 0.025).astype(np.uint8) * 255
    return cv2.resize(band, (n, n), interpolation=cv2.INTER_LINEAR) > 127


def _fibre_texture(rng: np.random.Generator, n: int, px: float) -> np.ndarray:
    """uint8 0-40 collagen-like streaks at a random angle, as a seamless tile repeated over the slide.

    The streaks are white noise smoothed by an anisotropic Gaussian in the Fourier domain, which makes
    the tile periodic at any angle.
    """
    noise = rng.standard_normal((_TEXTURE_TILE, _TEXTURE_TILE))
    k = np.fft.fftfreq(_TEXTURE_TILE) * 2 * math.pi
    ky, kx = np.meshgrid(k, k, indexing="ij")
    angle = rng.uniform(0, math.pi)
    along = kx * math.cos(angle) + ky * math.sin(angle)
    across = -kx * math.sin(angle) + ky * math.cos(angle)
    gain = np.exp(-0.5 * ((along * 6.0 * px) ** 2 + (across * 0.6 * px) ** 2))
    streaks = np.fft.ifft2(np.fft.fft2(noise) * gain).real
    streaks = (streaks - streaks.min()) / (np.ptp(streaks) + 1e-9)
    return _tiled((streaks * 40).astype(np.uint8), n, rng)


def _speckle(rng: np.random.Generator, n: int, amplitude: int) -> np.ndarray:
    """uint8 0..amplitude fine chromatin-like grain, as a tile repeated over the slide."""
    return _tiled(rng.integers(0, amplitude + 1, (_TEXTURE_TILE, _TEXTURE_TILE), dtype=np.uint8), n, rng)


def _tiled(tile: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``tile`` repeated to cover n x n, from a random phase so slides do not share a grid."""
    oy, ox = (int(v) for v in rng.integers(0, tile.shape[0], 2))
    reps = n // tile.shape[0] + 2
    return np.tile(tile, (reps, reps))[oy : oy + n, ox : ox + n]


# --------------------------------------------------------------------------------------------- tables


def demo_clinical(cfg: DemoConfig) -> pd.DataFrame:
    """One row per demo case, GDC-like fields; solid cases are higher stage/grade and die sooner."""
    _validate(cfg)
    rows = []
    for case_id, label in _true_classes(cfg).items():  # outcome follows the disease, not the recorded label
        rng = np.random.default_rng([cfg.seed, _stable_int(f"clinical:{case_id}")])
        solid = label == "solid"
        stage = int(rng.choice(4, p=[0.1, 0.2, 0.4, 0.3] if solid else [0.4, 0.3, 0.2, 0.1])) + 1
        event_time = rng.exponential(800.0 if solid else 3000.0) * (1.3 - 0.15 * stage)
        censor_time = rng.uniform(400.0, 3650.0)
        event = int(event_time <= censor_time)
        rows.append(
            {
                "case_id": case_id,
                "submitter_id": case_id,
                "project_id": "DEMO",
                "age_years": int(rng.integers(45, 86)),
                "sex": str(rng.choice(["female", "male"])),
                "race": str(rng.choice(_RACES, p=[0.6, 0.15, 0.15, 0.1])),
                "primary_diagnosis": "Squamous cell carcinoma, NOS" if solid else "Adenocarcinoma, NOS",
                "tissue_or_organ_of_origin": str(rng.choice(["Upper lobe, lung", "Lower lobe, lung", "Lung, NOS"])),
                "ajcc_stage": "Stage " + ("I", "II", "III", "IV")[stage - 1],
                "ajcc_t": f"T{min(4, max(1, stage + int(rng.integers(-1, 2))))}",
                "ajcc_n": f"N{min(2, max(0, stage - 1 - int(rng.integers(0, 2))))}",
                "ajcc_m": "M1" if stage == 4 else "M0",
                "tumor_grade": f"G{min(3, max(1, stage - 1 + int(rng.integers(0, 2)) + int(solid)))}",
                "vital_status": "Dead" if event else "Alive",
                "os_days": int(round(min(event_time, censor_time))) + 1,
                "os_event": event,
            }
        )
    df = pd.DataFrame(rows)
    return df.astype({"age_years": "int64", "os_days": "int64", "os_event": "int64"})


def demo_mutations(cfg: DemoConfig) -> pd.DataFrame:
    """Wide case x gene table: TP53 follows the class (solid mutant) in ~90% of cases, other genes are random."""
    _validate(cfg)
    rows = []
    for case_id, label in _true_classes(cfg).items():
        rng = np.random.default_rng([cfg.seed, _stable_int(f"mutations:{case_id}")])
        solid = label == "solid"
        tmb = float(round(math.exp(rng.normal(math.log(9.0 if solid else 4.0), 0.4)), 2))
        row: dict[str, object] = {"case_id": case_id, "tmb": tmb}
        mutated = 0
        for gene in GENES:
            if gene == "TP53":
                hit = solid == (rng.random() < _TP53_AGREEMENT)
            else:
                hit = bool(rng.random() < _GENE_RATES[gene])
            n_exons, hotspots = _GENE_EXONS[gene]
            row[gene] = int(hit)
            row[f"{gene}__class"] = str(rng.choice(_VARIANT_CLASSES)) if hit else ""
            row[f"{gene}__exon"] = f"{int(rng.choice(hotspots))}/{n_exons}" if hit else ""
            mutated += int(hit)
        row["n_nonsilent"] = max(mutated, int(round(tmb * _EXOME_MB)))
        rows.append(row)
    columns = ["case_id", "tmb", "n_nonsilent"] + [f"{g}{s}" for g in GENES for s in ("", "__class", "__exon")]
    df = pd.DataFrame(rows)[columns]
    return df.astype({"tmb": "float64", "n_nonsilent": "int64", **{g: "int8" for g in GENES}})


def write_demo_tables(
    cfg: DemoConfig,
    sheet_tsv: str | os.PathLike,
    clinical_parquet: str | os.PathLike,
    mutations_parquet: str | os.PathLike,
    *,
    slide_dir: str | os.PathLike,
) -> None:
    """Write the slide sheet (TSV, paths under ``slide_dir``), clinical and mutation tables, each atomically."""
    write_csv(sheet_tsv, demo_sheet(cfg, slide_dir), sep="\t")
    write_parquet(clinical_parquet, demo_clinical(cfg))
    write_parquet(mutations_parquet, demo_mutations(cfg))
