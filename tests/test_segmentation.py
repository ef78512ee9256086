"""Tissue segmentation: geometry of found contours/holes, physical area filters, ink filter, bad slides."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import tifffile
from _slide_fixtures import TISSUE_RGB, glass, ink_slide, paint, tissue_slide, write_aperio, write_generic

from slidesnake.io.svs import GLASS_RGB
from slidesnake.tissue.segmentation import (
    PRESETS,
    TISSUE_KEYS,
    SegmentationParams,
    TissueRecordError,
    find_contours,
    params_from_config,
    read_tissue,
    segment_slide,
    validate_tissue,
    write_tissue,
)

# a_h 0.5 keeps the 512² px (= 1 reference patch at 0.25 µm/px) hole, which the mask's close shrinks a bit
SMALL = params_from_config("default", {"a_t": 0.5, "a_h": 0.5})


@pytest.fixture(scope="module")
def slide_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("seg")


@pytest.fixture(scope="module")
def tissue40(slide_dir) -> Path:
    return write_aperio(slide_dir / "tissue40.svs", tissue_slide()[0], mpp=0.25)


def _bbox(polygon) -> list[int]:
    pts = np.asarray(polygon)
    return [*pts.min(0).tolist(), *pts.max(0).tolist()]


def test_presets_and_overrides():
    assert SegmentationParams() == params_from_config()
    assert (SegmentationParams().a_t, SegmentationParams().a_h, SegmentationParams().max_n_holes) == (100.0, 16.0, 8)
    tcga = params_from_config("tcga")
    assert (tcga.a_t, tcga.a_h, tcga.ink_filter) == (16.0, 4.0, True)
    biopsy = params_from_config("biopsy", {"close": 0})
    assert (biopsy.a_t, biopsy.a_h, biopsy.close) == (1.0, 2.0, 0)
    assert set(PRESETS) == {"default", "tcga", "biopsy"}
    with pytest.raises(ValueError, match="'nope'"):
        params_from_config("nope")
    with pytest.raises(ValueError, match="a_tt"):
        params_from_config("default", {"a_tt": 3})
    with pytest.raises(ValueError, match="mthresh"):
        SegmentationParams(mthresh=6)


def test_contours_and_hole_where_the_tissue_was_drawn(tissue40):
    record = segment_slide(tissue40, SMALL, slide_id="s1")
    assert set(TISSUE_KEYS) <= set(record)
    assert (record["status"], record["slide_id"], record["mpp_source"]) == ("ok", "s1", "openslide.mpp-x")
    assert (record["seg_level"], record["seg_downsample"]) == (2, 16.0)  # 1/4/16 pyramid: 16 is nearest 64
    _, boxes = tissue_slide()
    found = sorted((_bbox(c), len(h)) for c, h in zip(record["contours"], record["holes"]))
    # level-0 boxes agree with the drawn ones to within two segmentation pixels (32 px)
    big, small = found[0], found[1]
    assert np.allclose(big[0], boxes["big"], atol=32) and big[1] == 1
    assert np.allclose(small[0], boxes["small"], atol=32) and small[1] == 0
    hole = record["holes"][[_bbox(c) for c in record["contours"]].index(big[0])][0]
    assert np.allclose(_bbox(hole), boxes["hole"], atol=48)
    # (2048·1536 − 512² + 512²) px at 0.25 µm/px
    assert record["tissue_area_mm2"] == pytest.approx(2048 * 1536 * 0.0625 / 1e6, rel=0.05)


def test_area_filter_means_the_same_tissue_at_20x_and_40x(slide_dir, tissue40):
    # the same physical slide scanned at 20x: half the pixels per side
    image40, _ = tissue_slide()
    image20 = np.ascontiguousarray(image40[::2, ::2])
    tissue20 = write_generic(slide_dir / "tissue20.tif", image20, mpp=0.5)
    for a_t, expected in ((2.0, 1), (0.5, 2)):  # the small block is 1 reference patch (128 µm)²
        params = params_from_config("default", {"a_t": a_t, "a_h": 0.5, "seg_downsample": 16})
        n40 = len(segment_slide(tissue40, params)["contours"])
        n20 = len(segment_slide(tissue20, params)["contours"])
        assert (n40, n20) == (expected, expected), a_t


def test_max_n_holes_keeps_the_largest():
    mask = np.zeros((200, 200), np.uint8)
    mask[10:190, 10:190] = 255
    for i, side in enumerate((10, 14, 18)):
        mask[30 + 50 * i : 30 + 50 * i + side, 40 : 40 + side] = 0
    params = SegmentationParams(a_t=0.0, a_h=0.0, max_n_holes=2)
    tissue, holes = find_contours(mask, params, ref_area_px=1.0)
    assert len(tissue) == 1 and len(holes[0]) == 2
    # a hole contour runs through the tissue pixels around the hole: side + 2 pixels wide
    kept = sorted(int(np.ptp(h.reshape(-1, 2)[:, 0])) + 1 for h in holes[0])
    assert kept == [16, 20]
    # hole contour areas are 11², 15², 19²: a_h = 16² leaves only the largest
    _, holes = find_contours(mask, SegmentationParams(a_t=0.0, a_h=16.0**2, max_n_holes=8), ref_area_px=1.0)
    assert len(holes[0]) == 1


def test_ink_filter_removes_pen_marks_only(slide_dir):
    image, boxes = ink_slide()
    path = write_aperio(slide_dir / "ink.svs", image)
    plain = segment_slide(path, SMALL)
    assert len(plain["contours"]) == 4  # two tissue blocks + the blue and the green stroke
    filtered = segment_slide(path, params_from_config("default", {"a_t": 0.5, "a_h": 0.5, "ink_filter": True}))
    got = sorted(_bbox(c) for c in filtered["contours"])
    assert len(got) == 2
    assert np.allclose(got[0], boxes["big"], atol=32) and np.allclose(got[1], boxes["small"], atol=32)
    assert params_from_config("tcga").ink_filter  # on in the TCGA preset


def test_black_ink_is_removed(slide_dir):
    image, _ = tissue_slide()
    paint(image, (3200, 256, 3456, 1792), (20, 20, 25))
    path = write_aperio(slide_dir / "black.svs", image)
    with_ink = params_from_config("default", {"a_t": 0.5, "a_h": 0.5, "ink_filter": True})
    assert len(segment_slide(path, SMALL)["contours"]) == 3
    assert len(segment_slide(path, with_ink)["contours"]) == 2


def test_white_slide_is_no_tissue(slide_dir):
    path = write_aperio(slide_dir / "white.svs", glass(2048, 1536))
    record = segment_slide(path, SMALL)
    assert record["status"] == "no_tissue" and record["contours"] == [] and record["tissue_area_mm2"] == 0.0


def test_bad_files_get_an_unreadable_status(slide_dir, tissue40):
    not_slide = slide_dir / "notes.svs"
    not_slide.write_text("hello")
    truncated = slide_dir / "truncated.svs"
    data = tissue40.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    no_mpp = write_aperio(slide_dir / "nompp.svs", tissue_slide()[0], mpp=None, app_mag=None)
    cases = (
        (not_slide, "notes.svs: not a slide format"),
        (truncated, "truncated.svs: truncated TIFF: the file has"),  # TIFF header, data cut: not "not a slide"
        (no_mpp, "set mpp_fallback: <µm/px>"),  # the real config key
    )
    for path, reason in cases:
        record = segment_slide(path, SMALL)
        assert record["status"].startswith("unreadable: ") and reason in record["status"], record["status"]
        assert record["contours"] == [] and record["holes"] == []
    assert "not a slide format" not in segment_slide(truncated, SMALL)["status"]
    header_only = slide_dir / "header.svs"
    header_only.write_bytes(data[:300])  # the first directory's values are cut off
    assert "truncated or corrupt TIFF" in segment_slide(header_only, SMALL)["status"]
    assert segment_slide(no_mpp, SMALL, fallback_mpp=0.25)["status"] == "ok"


def test_region_decode_failure_is_unreadable(slide_dir, tissue40):
    corrupt = slide_dir / "corrupt.svs"
    data = bytearray(tissue40.read_bytes())
    with tifffile.TiffFile(tissue40) as tif:
        level2 = tif.pages[3]  # pages: level 0, thumbnail, level 1, level 2 (the segmentation level)
        spans = list(zip(level2.dataoffsets, level2.databytecounts))
    rng = np.random.default_rng(0)
    for offset, count in spans:
        data[offset + 2 : offset + count] = rng.integers(0, 256, count - 2, dtype=np.uint8).tobytes()
    corrupt.write_bytes(bytes(data))
    record = segment_slide(corrupt, SMALL)
    assert record["status"].startswith("unreadable: ") and "corrupt.svs" in record["status"]


def test_tissue_json_round_trip_and_validation(tmp_path, tissue40):
    record = segment_slide(tissue40, SMALL)
    write_tissue(tmp_path / "t.json", record)
    assert read_tissue(tmp_path / "t.json") == json.loads(json.dumps(record))
    broken = {k: v for k, v in record.items() if k != "holes"}
    (tmp_path / "b.json").write_text(json.dumps(broken))
    with pytest.raises(TissueRecordError, match=r"b\.json.*'holes'"):
        read_tissue(tmp_path / "b.json")
    (tmp_path / "c.json").write_text("{not json")
    with pytest.raises(TissueRecordError, match="c.json"):
        read_tissue(tmp_path / "c.json")
    with pytest.raises(TissueRecordError, match="status"):
        write_tissue(tmp_path / "d.json", {**record, "status": "fine"})


def test_glass_colour_is_not_tissue():
    # the fixture colours sit on either side of the default saturation threshold of 8
    import cv2

    sat = cv2.cvtColor(np.array([[GLASS_RGB, TISSUE_RGB]], np.uint8), cv2.COLOR_RGB2HSV)[0, :, 1]
    assert sat[0] < 8 < sat[1]


def test_a_biopsy_under_the_area_filter_says_how_many_their_area_and_the_preset(slide_dir):
    # a 0.95 mm² biopsy on a 40x slide: 7800 x 1948 px at 0.25 µm/px; default a_t = 100 x (128 µm)² = 1.64 mm²
    image = glass(8192, 2560)
    paint(image, (196, 306, 196 + 7800, 306 + 1948), TISSUE_RGB)
    path = write_aperio(slide_dir / "biopsy.svs", image)
    record = segment_slide(path, params_from_config("default"))
    status = record["status"]
    assert re.match(r"no_tissue: 1 tissue region\(s\) of 0\.9[56] mm²", status), status
    assert "a_t=100 (×(128 µm)² = 1.64 mm²)" in status
    assert "segmentation.preset: tcga keeps 1 of them" in status
    validate_tissue(record)  # a valid status for the record contract
    # the advice is true: that preset keeps the region
    kept = segment_slide(path, params_from_config("tcga"))
    assert kept["status"] == "ok" and kept["tissue_area_mm2"] == pytest.approx(0.95, rel=0.02)
    # and the a_t suggestion too
    a_t = float(status.rsplit("e.g. ", 1)[1].rstrip(")"))
    assert segment_slide(path, params_from_config("default", {"a_t": a_t}))["status"] == "ok"
    # glass-only stays the bare status
    assert segment_slide(write_aperio(slide_dir / "glass.svs", glass(2048, 1536)), SMALL)["status"] == "no_tissue"


def test_median_threshold_equals_opencv_median_blur_then_threshold():
    import cv2

    from slidesnake.tissue.segmentation import median_threshold

    rng = np.random.default_rng(0)
    for ksize in (1, 3, 5, 7, 9, 11, 17):
        for _ in range(10):
            image = rng.integers(0, 30, (rng.integers(5, 80), rng.integers(5, 80)), dtype=np.uint8)
            thresh = int(rng.integers(0, 30))
            expected = cv2.threshold(cv2.medianBlur(image, ksize), thresh, 255, cv2.THRESH_BINARY)[1]
            np.testing.assert_array_equal(median_threshold(image, ksize, thresh), expected)
    # on a real saturation channel (non-contiguous HSV view), CLAM's recipe, exactly
    image, _ = tissue_slide()
    sat = cv2.cvtColor(image[::16, ::16], cv2.COLOR_RGB2HSV)[..., 1]
    ref = cv2.threshold(cv2.medianBlur(np.ascontiguousarray(sat), 7), 8, 255, cv2.THRESH_BINARY)[1]
    np.testing.assert_array_equal(median_threshold(sat, 7, 8), ref)
