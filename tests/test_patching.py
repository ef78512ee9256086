"""Patch grids: hand-computed four_pt decisions, hole rejection, tissue fraction, h5 contract."""

from __future__ import annotations

import cv2
import h5py
import numpy as np
import openslide
import pytest
from _slide_fixtures import tissue_slide, write_aperio

from slidesnake.io.slide import read_patch, read_plan, slide_info
from slidesnake.tissue.patching import keep_mask, patch_coords, patch_slide, points_in_polygon, read_coords
from slidesnake.tissue.segmentation import params_from_config, segment_slide

SQUARE = [[1000, 1000], [3000, 1000], [3000, 3000], [1000, 3000]]
HOLE = [[1800, 1800], [2300, 1800], [2300, 2300], [1800, 2300]]


def _record(contours, holes, mpp=0.5, width=4000, height=4000, status="ok") -> dict:
    return {"slide_id": "s", "path": "s.svs", "status": status, "mpp": mpp, "width": width, "height": height,
            "contours": contours, "holes": holes}  # fmt: skip


def test_points_in_polygon_matches_opencv_point_polygon_test():
    rng = np.random.default_rng(0)
    xs, ys = np.arange(0, 80) + 0.37, np.arange(0, 80) + 0.61
    for _ in range(30):
        n = rng.integers(3, 15)
        angles = np.sort(rng.uniform(0, 2 * np.pi, n))
        radii = rng.uniform(5, 38, n)
        poly = np.round(np.stack([40 + radii * np.cos(angles), 40 + radii * np.sin(angles)], 1))
        ours = points_in_polygon(poly, xs, ys)
        contour = poly.astype(np.float32)
        dist = np.array([[cv2.pointPolygonTest(contour, (float(x), float(y)), True) for x in xs] for y in ys])
        clear = np.abs(dist) > 1e-3  # OpenCV works in float32: points within 1e-3 of an edge are ties
        assert (ours == (dist > 0))[clear].all() and clear.mean() > 0.99


def test_four_point_rule_on_a_hand_computed_square():
    # 0.5 µm/px: 20x cells are 256 px; the four points sit at x + 64 and x + 192
    coords = patch_coords(_record([SQUARE], [[]]), 20)
    # columns j with j·256+192 ≥ 1000 and j·256+64 ≤ 3000: j = 4..11, same for rows
    expected = np.array([[x, y] for y in range(4 * 256, 12 * 256, 256) for x in range(4 * 256, 12 * 256, 256)])
    assert coords.dtype == np.int64 and coords.shape == (64, 2)
    assert (coords == expected).all()  # row-major: y, then x


def test_centre_in_hole_is_rejected():
    coords = patch_coords(_record([SQUARE], [[HOLE]]), 20)
    # centres j·256+128 in (1800, 2300): j = 7, 8 in both axes → 4 cells removed
    assert len(coords) == 60
    removed = {(x, y) for x in (7 * 256, 8 * 256) for y in (7 * 256, 8 * 256)}
    assert not removed & {tuple(c) for c in coords.tolist()}


def test_island_in_a_hole_keeps_its_own_patches():
    # a second contour inside the first one's hole is tissue again (CLAM checks holes per contour)
    island = [[1900, 1900], [2200, 1900], [2200, 2200], [1900, 2200]]
    coords = patch_coords(_record([SQUARE, island], [[HOLE], []]), 20)
    assert {(7 * 256, 7 * 256), (8 * 256, 8 * 256)} <= {tuple(c) for c in coords.tolist()}


def test_min_tissue_fraction():
    coords = patch_coords(_record([SQUARE], [[HOLE]]), 20, min_tissue_fraction=1.0)
    # fully inside the square: j = 4..10 (7×7); minus the 2×2 cells overlapping the hole
    assert len(coords) == 45
    half = patch_coords(_record([SQUARE], [[]]), 20, min_tissue_fraction=0.5)
    # edge cells: column 3 covers 1000..1024 (9%), column 11 covers 2816..3000 (72%) → 4..11
    assert len(half) == 64
    with pytest.raises(ValueError, match="min_tissue_fraction"):
        patch_coords(_record([SQUARE], [[]]), 20, min_tissue_fraction=1.5)


def test_5x_grid_nests_4x4_20x_cells_at_non_round_mpp():
    record = _record([SQUARE], [[HOLE]], mpp=0.2527, width=8000, height=8000)
    c20, c5 = patch_coords(record, 20), patch_coords(record, 5)
    assert (c20 % 507 == 0).all() and (c5 % 2028 == 0).all()
    parents = {tuple(p) for p in (c20 // 2028 * 2028).tolist()}
    assert parents <= {tuple(p) for p in c5.tolist()}


def test_non_ok_or_empty_records_give_no_patches():
    for record in (_record([], [], status="no_tissue"), _record([], [], status="unreadable: x.svs: bad")):
        out = patch_coords(record, 20)
        assert out.shape == (0, 2) and out.dtype == np.int64


def test_keep_mask_covers_partial_edge_cells():
    # a 1000×700 slide with 256 px cells has 4 × 3 cells, the last ones partly outside the slide
    tri = [[0, 0], [999, 0], [999, 699], [0, 699]]
    assert keep_mask([tri], [[]], 1000, 700, 256).shape == (3, 4)
    assert keep_mask([tri], [[]], 1000, 700, 256).all()


@pytest.fixture(scope="module")
def tissue_json(tmp_path_factory):
    d = tmp_path_factory.mktemp("patch")
    slides = {
        "s40": write_aperio(d / "s40.svs", tissue_slide()[0], mpp=0.25),
        "s10": write_aperio(d / "s10.svs", tissue_slide()[0], mpp=1.0, app_mag=10),
    }
    params = params_from_config("default", {"a_t": 0.5, "a_h": 0.5})
    return {name: segment_slide(path, params, slide_id=name) for name, path in slides.items()}


def test_patch_slide_writes_the_coords_contract(tmp_path, tissue_json):
    record = tissue_json["s40"]
    n = patch_slide(record, 5, tmp_path / "s40.h5")
    coords, attrs = read_coords(tmp_path / "s40.h5")
    assert n == len(coords) > 0 and (coords == patch_coords(record, 5)).all()
    assert attrs["patch_size"] == 256 and attrs["patch_size_level0"] == 2048 and attrs["target_mpp"] == 2.0
    assert (attrs["read_level"], attrs["read_downsample"]) == (1, 4.0)  # 1.0 µm/px level ≤ 2.0·1.05
    assert (attrs["mpp_source"], attrs["slide_id"], attrs["status"], attrs["magnification"]) == (
        "openslide.mpp-x",
        "s40",
        "ok",
        5.0,
    )


def test_patch_slide_coarse_slide_is_an_empty_set_not_an_error(tmp_path, tissue_json):
    record = tissue_json["s10"]
    assert patch_slide(record, 20, tmp_path / "a.h5") == 0
    coords, attrs = read_coords(tmp_path / "a.h5")
    assert coords.shape == (0, 2) and attrs["status"].startswith("resolution: ") and "allow_upsample" in attrs["status"]
    n = patch_slide(record, 20, tmp_path / "b.h5", allow_upsample=True)
    coords, attrs = read_coords(tmp_path / "b.h5")
    assert n == len(coords) > 0 and bool(attrs["upsample"]) and attrs["status"] == "ok"
    assert attrs["patch_size_level0"] == 128


def test_patch_slide_unreadable_record(tmp_path):
    record = {**_record([], [], status="unreadable: x.svs: truncated"), "mpp": None, "mpp_source": None}
    assert patch_slide(record, 20, tmp_path / "u.h5") == 0
    coords, attrs = read_coords(tmp_path / "u.h5")
    assert coords.shape == (0, 2) and attrs["status"] == "unreadable: x.svs: truncated"


def _clam_region(slide, h5_path, idx):
    """CLAM's Whole_Slide_Bag_FP: patch_level and patch_size from f["coords"].attrs, then read_region."""
    with h5py.File(h5_path, "r") as f:
        patch_level = f["coords"].attrs["patch_level"]
        patch_size = f["coords"].attrs["patch_size"]
        coord = f["coords"][idx]
    region = slide.read_region(tuple(int(c) for c in coord), int(patch_level), (int(patch_size), int(patch_size)))
    return np.asarray(region.convert("RGB"))


def _trident_geometry(h5_path):
    """TRIDENT's WSI reading: read_coords, the three essential .get() lookups, create_patcher's level-0 size."""
    with h5py.File(h5_path, "r") as f:
        attrs = dict(f["coords"].attrs)
        coords = f["coords"][:]
    patch_size = attrs.get("patch_size", None)
    level0_magnification = attrs.get("level0_magnification", None)
    target_magnification = attrs.get("target_magnification", None)
    assert None not in (patch_size, level0_magnification, target_magnification)  # else TRIDENT falls back
    return coords, attrs, round(patch_size * level0_magnification / target_magnification)


def test_clam_and_trident_read_the_coords_dataset_attributes(tmp_path):
    image, _ = tissue_slide()
    slide_path = write_aperio(tmp_path / "s20.svs", image, mpp=0.5, app_mag=20)
    record = segment_slide(slide_path, params_from_config("default", {"a_t": 0.5, "a_h": 0.5}), slide_id="s20")
    info = slide_info(slide_path)
    with openslide.OpenSlide(str(slide_path)) as slide:
        for mag, size0, level in ((20, 256, 0), (5, 1024, 1)):
            out = tmp_path / f"{mag}.h5"
            assert patch_slide(record, mag, out) > 0
            coords, attrs, trident_size0 = _trident_geometry(out)
            assert trident_size0 == attrs["patch_size_level0"] == size0
            assert (attrs["level0_magnification"], attrs["target_magnification"]) == (20.0, float(mag))
            assert (attrs["level0_width"], attrs["level0_height"], attrs["name"]) == (4096, 3072, "s20")
            assert attrs["patch_level"] == level and attrs["read_size"] == 256
            plan = read_plan(info, mag)
            for idx in (0, len(coords) // 2, len(coords) - 1):
                # CLAM reads exactly the pixels we read (no resize: this slide has a level at the target mpp)
                assert (_clam_region(slide, out, idx) == read_patch(slide, *coords[idx], plan)).all()
            # the file-level attributes stay as before for our own readers
            _, root = read_coords(out)
            assert root["patch_size_level0"] == size0 and root["magnification"] == mag


def test_coords_dataset_attributes_on_a_40x_slide_and_an_empty_set(tmp_path, tissue_json):
    patch_slide(tissue_json["s40"], 20, tmp_path / "s40.h5")
    _, attrs, trident_size0 = _trident_geometry(tmp_path / "s40.h5")
    assert trident_size0 == attrs["patch_size_level0"] == 512 and attrs["level0_magnification"] == 40.0
    # no 0.5 µm/px level on a 1/4/16 pyramid of a 40x scan: CLAM would need 512 px at level 0
    assert (attrs["patch_level"], attrs["read_size"], attrs["patch_size"]) == (0, 512, 256)
    record = {**_record([], [], status="unreadable: x.svs: truncated"), "mpp": None, "mpp_source": None}
    patch_slide(record, 20, tmp_path / "u.h5")
    with h5py.File(tmp_path / "u.h5", "r") as f:
        assert f["coords"].shape == (0, 2) and f["coords"].attrs["patch_size"] == 256
        assert "patch_level" in f["coords"].attrs and "target_magnification" in f["coords"].attrs
