"""A synthetic image-caption corpus for pretraining the demo's pathology VLM (``demo-clip``).

A pathology VLM such as QuiltNet or CONCH was pretrained elsewhere, on other slides; the demo mimics
that. The corpus is rendered by the demo generator's own tissue renderers (slidesnake/data/demo.py)
but from **other seeds and other slides**: every corpus region has a ``CAPTION-…`` id (never a
``DEMO-…`` slide id), its random stream is seeded by ``(seed, CORPUS_SEED_OFFSET, split)`` instead of
the demo cohort's ``(seed, slide_id)``, and it is a square region of tissue of one kind, not a slide.

Each tile is one tissue kind at 20x (128 µm, cell words) or 5x (512 µm, architecture words) and
carries several captions in varied words: synonyms of the kind, caption templates, and
magnification-specific descriptions. ``split`` gives disjoint regions (train / val / test); the test
split is the held-out tile set with known class used for tile-level zero-shot metrics.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass

import cv2
import h5py
import numpy as np

from slidesnake.data import demo
from slidesnake.io.atomic import write_h5

log = logging.getLogger(__name__)

KINDS: tuple[str, ...] = ("solid", "glandular", "stroma", "necrosis", "inflammation", "fat", "background")
SPLITS: tuple[str, ...] = ("train", "val", "test")
MAGNIFICATIONS: tuple[int, ...] = (5, 20)
# Corpus regions are rendered at 2 px/µm (a native 20x scan): a 20x tile is 256 px, a 5x tile 1024 px
# downsampled by 4 (INTER_AREA, as the slide reader does).
RENDER_PX_PER_UM = 2.0
REGION_UM = 1024.0
TILE_UM = {20: 128.0, 5: 512.0}
CORPUS_SEED_OFFSET = 7919  # a different random stream from the demo cohort's, whatever demo.seed is

# Vocabulary per kind. Synonyms name the kind; "20" lists cell-level words, "5" architecture words.
VOCABULARY: dict[str, dict[str, list[str]]] = {
    "solid": {
        "synonyms": [
            "solid tumour",
            "solid carcinoma",
            "solid tumor",
            "sheets of densely packed tumour cells",
            "solid sheets of malignant cells",
            "poorly differentiated solid carcinoma",
        ],
        "20": [
            "densely packed small dark nuclei",
            "crowded hyperchromatic tumour nuclei",
            "tumour cells with scant cytoplasm and dark nuclei",
            "high nuclear density with little stroma",
        ],
        "5": [
            "solid sheets and nests of tumour cells",
            "nests separated by thin fibrous septa",
            "diffuse solid growth without glands",
            "a dark cellular solid growth pattern",
        ],
    },
    "glandular": {
        "synonyms": [
            "glandular tumour",
            "adenocarcinoma",
            "glandular carcinoma",
            "adenocarcinoma with gland formation",
            "gland-forming tumour",
            "glands in fibrous stroma",
        ],
        "20": [
            "a gland lined by columnar cells around an empty lumen",
            "large pale vesicular nuclei lining a gland",
            "neoplastic gland with a clear central lumen",
            "glandular epithelium with open nuclei and nucleoli",
        ],
        "5": [
            "round glands scattered in pink fibrous stroma",
            "many tumour glands with open lumina",
            "gland formation throughout the tissue",
            "an acinar architecture of round glands",
        ],
    },
    "stroma": {
        "synonyms": ["stroma", "fibrous stroma", "collagenous stroma", "connective tissue", "desmoplastic stroma"],
        "20": [
            "pink collagen fibres with sparse spindle nuclei",
            "wavy eosinophilic fibres and elongated fibroblast nuclei",
            "few spindle cells in collagen",
        ],
        "5": [
            "bands of pink fibrous tissue",
            "streaming collagen without glands or tumour cells",
            "paucicellular pink connective tissue",
        ],
    },
    "necrosis": {
        "synonyms": ["necrosis", "tumour necrosis", "necrotic tissue", "coagulative necrosis", "necrotic debris"],
        "20": [
            "pale granular eosinophilic debris with nuclear dust",
            "fragmented karyorrhectic nuclei in pink debris",
            "ghost cells and scattered nuclear fragments",
        ],
        "5": [
            "a pale pink structureless area",
            "amorphous eosinophilic necrotic zone",
            "a smudgy necrotic field with scattered debris",
        ],
    },
    "inflammation": {
        "synonyms": [
            "inflammation",
            "lymphocytic infiltrate",
            "inflammatory cells",
            "dense lymphocytes",
            "chronic inflammation",
        ],
        "20": [
            "small round dark lymphocytes with little cytoplasm",
            "densely packed small round uniform nuclei",
            "a sheet of lymphocytes",
        ],
        "5": [
            "a dense blue cellular infiltrate",
            "a lymphoid aggregate",
            "sheets of small blue inflammatory cells",
        ],
    },
    "fat": {
        "synonyms": ["fat", "adipose tissue", "adipocytes", "fatty tissue", "mature fat"],
        "20": [
            "large empty adipocytes with thin membranes",
            "clear fat cells with compressed peripheral nuclei",
            "thin pink septa around empty vacuoles",
        ],
        "5": [
            "a honeycomb of clear fat cells",
            "lobules of mature adipose tissue",
            "large clear spaces outlined by thin septa",
        ],
    },
    "background": {
        "synonyms": ["background", "glass", "empty slide", "no tissue", "blank background"],
        "20": ["bare glass without cells", "empty white background", "no tissue present"],
        "5": ["empty glass outside the tissue", "white background without tissue", "no tissue on the slide"],
    },
}
TEMPLATES: dict[int, list[str]] = {
    20: [
        "{name}.",
        "{name}, high power.",
        "H&E, 20x: {name}; {detail}.",
        "high magnification photomicrograph of {name} showing {detail}.",
        "{detail}, consistent with {name}.",
        "histology at 20x shows {detail}.",
        "an H&E stained section of {name}.",
        "a pathology image of {name} with {detail}.",
    ],
    5: [
        "{name}.",
        "{name}, low power.",
        "H&E, 5x: {name}; {detail}.",
        "low magnification view of {name} showing {detail}.",
        "{detail}, in keeping with {name}.",
        "at low power, {detail}.",
        "an H&E stained section of {name}.",
        "a pathology image of {name} with {detail}.",
    ],
}


class CaptionCorpusError(ValueError):
    """Corpus parameters that cannot make a corpus (unknown kind or split, no tiles)."""


@dataclass(frozen=True)
class CorpusConfig:
    """Size of one split of the corpus; ``seed`` is combined with a corpus-only offset (see module doc)."""

    regions_per_kind: int = 6
    tiles_20x_per_region: int = 24
    tiles_5x_per_region: int = 12
    captions_per_tile: int = 4
    image_size: int = 64
    seed: int = 0


def split_regions(cfg: CorpusConfig, split: str) -> list[str]:
    """Region ids of one split: ``CAPTION-{split}-{kind}-{i}``; disjoint between splits, never a demo slide id."""
    if split not in SPLITS:
        raise CaptionCorpusError(f"split {split!r} is not one of {SPLITS}")
    return [f"CAPTION-{split}-{kind}-{i:03d}" for kind in KINDS for i in range(cfg.regions_per_kind)]


def render_corpus(cfg: CorpusConfig, split: str) -> dict[str, np.ndarray]:
    """Tiles and captions of one split: ``tiles`` (N,S,S,3) uint8 at ``cfg.image_size``, ``kind`` (N,),
    ``magnification`` (N,), ``region`` (N,), ``captions`` (N, captions_per_tile) str."""
    if cfg.regions_per_kind < 1 or cfg.captions_per_tile < 1:
        raise CaptionCorpusError(f"{cfg}: regions_per_kind and captions_per_tile must be at least 1")
    tiles, kinds, mags, regions, captions = [], [], [], [], []
    for region_id in split_regions(cfg, split):
        kind = region_id.split("-")[2]
        rng = np.random.default_rng([cfg.seed, CORPUS_SEED_OFFSET, demo._stable_int(region_id)])
        image, gland = render_region(rng, kind)
        for mag, count in ((20, cfg.tiles_20x_per_region), (5, cfg.tiles_5x_per_region)):
            for tile_kind, tile in _cut_tiles(rng, image, gland, kind, mag, count):
                tiles.append(_resize(tile, cfg.image_size))
                kinds.append(tile_kind)
                mags.append(mag)
                regions.append(region_id)
                captions.append(caption_tile(rng, tile_kind, mag, cfg.captions_per_tile))
    return {
        "tiles": np.stack(tiles),
        "kind": np.array(kinds),
        "magnification": np.array(mags, dtype=np.int64),
        "region": np.array(regions),
        "captions": np.array(captions),
    }


def caption_tile(rng: np.random.Generator, kind: str, mag: int, n: int) -> list[str]:
    """``n`` distinct-as-possible captions of one tile: a random synonym, template and detail each."""
    vocab = VOCABULARY[kind]
    out = []
    for _ in range(n):
        template = TEMPLATES[mag][int(rng.integers(len(TEMPLATES[mag])))]
        name = vocab["synonyms"][int(rng.integers(len(vocab["synonyms"])))]
        detail = vocab[str(mag)][int(rng.integers(len(vocab[str(mag)])))]
        out.append(template.format(name=name, detail=detail))
    return out


def write_corpus(cfg: CorpusConfig, split: str, out_h5: str | os.PathLike) -> int:
    """Render one split and write it atomically; returns the number of tiles."""
    corpus = render_corpus(cfg, split)
    text = h5py.string_dtype("utf-8")
    write_h5(
        out_h5,
        {
            "tiles": corpus["tiles"],
            "kind": corpus["kind"].astype(object).astype(text),
            "magnification": corpus["magnification"],
            "region": corpus["region"].astype(object).astype(text),
            "captions": corpus["captions"].astype(object).astype(text),
        },
        {"split": split, "kinds": ",".join(KINDS), "seed": cfg.seed, "seed_offset": CORPUS_SEED_OFFSET},
    )
    log.info("%s: %d tiles of split %s", out_h5, len(corpus["tiles"]), split)
    return len(corpus["tiles"])


def read_corpus(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The arrays :func:`write_corpus` wrote (strings decoded)."""
    with h5py.File(path, "r") as f:
        out = {"tiles": f["tiles"][()], "magnification": f["magnification"][()]}
        for key in ("kind", "region", "captions"):
            out[key] = f[key].asstr()[()]
    return out


# --------------------------------------------------------------------------------------------- rendering


def render_region(rng: np.random.Generator, kind: str) -> tuple[np.ndarray, np.ndarray | None]:
    """RGB region (REGION_UM square at RENDER_PX_PER_UM) of one kind, and for glandular regions a bool
    mask of gland pixels (epithelium + lumen), used to cut gland-centred 20x tiles and gland-free stroma."""
    if kind not in KINDS:
        raise CaptionCorpusError(f"tissue kind {kind!r} is not one of {KINDS}")
    px = RENDER_PX_PER_UM
    n = int(REGION_UM * px)
    if kind == "background":
        return demo._render_glass(rng, n), None
    mask = np.full((n, n), 255, np.uint8)
    h_lut, e_lut = demo._stain_luts(rng)
    renderer = {
        "solid": demo._solid_stains,
        "glandular": demo._glandular_stains,
        "stroma": _stroma_stains,
        "necrosis": _necrosis_stains,
        "inflammation": _inflammation_stains,
        "fat": _fat_stains,
    }[kind]
    h, e = renderer(rng, mask, px)
    gland = (e < 45) if kind == "glandular" else None  # ring (30-40) and lumen (4); stroma is >= 50
    sigma = 0.35 * px
    h = cv2.GaussianBlur(h, (0, 0), sigma)
    e = cv2.GaussianBlur(e, (0, 0), sigma)
    channels = [cv2.multiply(cv2.LUT(h, h_lut[c]), cv2.LUT(e, e_lut[c]), scale=1 / 255) for c in range(3)]
    return cv2.merge(channels), gland


def _resize(tile: np.ndarray, size: int) -> np.ndarray:
    """Shrink a tile to the model input size the way the feature extractor does (INTER_AREA)."""
    if tile.shape[0] == size:
        return tile
    interpolation = cv2.INTER_AREA if size < tile.shape[0] else cv2.INTER_CUBIC
    return cv2.resize(tile, (size, size), interpolation=interpolation)


def _cut_tiles(
    rng: np.random.Generator, image: np.ndarray, gland: np.ndarray | None, kind: str, mag: int, count: int
) -> list[tuple[str, np.ndarray]]:
    """``count`` tiles of one magnification from a region, with the kind each one shows.

    Glandular regions give gland-centred 20x tiles (gland pixels >= 25%) as glandular and gland-free 20x
    tiles as stroma, as in the demo's glandular slides, whose 20x patches are often stroma only.
    """
    size = int(TILE_UM[mag] * RENDER_PX_PER_UM)
    n = image.shape[0]
    out: list[tuple[str, np.ndarray]] = []
    tries = 0
    while len(out) < count and tries < 50 * count:
        tries += 1
        y, x = (int(v) for v in rng.integers(0, n - size + 1, 2))
        tile = image[y : y + size, x : x + size]
        tile_kind = kind
        if gland is not None and mag == 20:
            fraction = float(gland[y : y + size, x : x + size].mean())
            if fraction >= 0.25:
                tile_kind = "glandular"
            elif fraction == 0.0:
                tile_kind = "stroma"
            else:
                continue
            if tile_kind == "stroma" and sum(k == "stroma" for k, _ in out) >= count // 3:
                continue
        out.append((tile_kind, np.ascontiguousarray(tile)))
    return out


def _stroma_stains(rng: np.random.Generator, mask: np.ndarray, px: float) -> tuple[np.ndarray, np.ndarray]:
    """The demo's glandular stroma without glands: eosin-rich collagen streaks and sparse spindle nuclei."""
    n = mask.shape[0]
    e = cv2.add(np.full((n, n), int(rng.integers(50, 65)), np.uint8), demo._fibre_texture(rng, n, px))
    h = np.full((n, n), 6, np.uint8)
    points = demo._jittered_hex_grid(rng, n, rng.uniform(26.0, 34.0) * px, 0.5)
    for x, y in points.tolist():
        axes = (round(rng.uniform(5.0, 8.0) * px), round(rng.uniform(1.2, 2.0) * px))
        cv2.ellipse(h, (x, y), axes, float(rng.uniform(0, 180)), 0, 360, int(rng.integers(110, 140)), -1)
    return cv2.subtract(h, demo._speckle(rng, n, 20)), e


def _necrosis_stains(rng: np.random.Generator, mask: np.ndarray, px: float) -> tuple[np.ndarray, np.ndarray]:
    """Pale granular eosin with scattered karyorrhectic nuclear dust."""
    n = mask.shape[0]
    grain = cv2.GaussianBlur(rng.integers(0, 30, (n, n), dtype=np.uint8), (0, 0), 1.5 * px)
    e = cv2.add(np.full((n, n), int(rng.integers(30, 42)), np.uint8), grain)
    h = np.full((n, n), int(rng.integers(8, 14)), np.uint8)
    dust = rng.integers(0, n, (int(n * n / (14.0 * px) ** 2), 2))
    for x, y in dust.tolist():
        cv2.circle(h, (x, y), max(1, round(rng.uniform(0.6, 1.6) * px)), int(rng.integers(90, 160)), -1)
    return h, e


def _inflammation_stains(rng: np.random.Generator, mask: np.ndarray, px: float) -> tuple[np.ndarray, np.ndarray]:
    """Sheets of small round uniform dark lymphocyte nuclei with a thin rim of cytoplasm."""
    n = mask.shape[0]
    e = np.full((n, n), int(rng.integers(14, 22)), np.uint8)
    h = np.full((n, n), int(rng.integers(10, 16)), np.uint8)
    points = demo._jittered_hex_grid(rng, n, rng.uniform(6.5, 8.0) * px, 0.3)
    points = points[rng.random(len(points)) > 0.1]
    for x, y in points.tolist():
        cv2.circle(h, (x, y), max(1, round(rng.uniform(2.4, 3.2) * px)), int(rng.integers(190, 230)), -1)
    return cv2.subtract(h, demo._speckle(rng, n, 25)), e


def _fat_stains(rng: np.random.Generator, mask: np.ndarray, px: float) -> tuple[np.ndarray, np.ndarray]:
    """Adipocytes: large clear vacuoles outlined by thin eosin membranes, rare flattened nuclei."""
    n = mask.shape[0]
    e = np.full((n, n), 3, np.uint8)
    h = np.zeros((n, n), np.uint8)
    spacing = rng.uniform(60.0, 90.0) * px
    centres = demo._jittered_hex_grid(rng, n, spacing, 0.2)
    labels = np.zeros((n, n), np.int32)
    for k, (x, y) in enumerate(centres.tolist(), start=1):
        cv2.circle(labels, (x, y), int(spacing), k, -1)  # later cells overlap earlier: polygon-like borders
    edges = cv2.morphologyEx(labels.astype(np.float32), cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)) > 0
    edges = cv2.dilate(edges.astype(np.uint8), np.ones((max(1, round(0.8 * px)),) * 2, np.uint8)) > 0
    e[edges] = int(rng.integers(45, 60))
    for x, y in centres[rng.random(len(centres)) < 0.15].tolist():
        angle = float(rng.uniform(0, 2 * math.pi))
        xy = (int(x + spacing / 2 * math.cos(angle)), int(y + spacing / 2 * math.sin(angle)))
        cv2.ellipse(h, xy, (round(4 * px), round(1.2 * px)), math.degrees(angle) + 90, 0, 360, 120, -1)
    return h, e
