"""QC: the PNG shows contours, holes and kept patches where they are; the cohort table lists every slide."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from _slide_fixtures import tissue_slide, write_aperio

from slidesnake.tissue.patching import patch_coords, patch_slide
from slidesnake.tissue.qc import CONTOUR_RGB, HOLE_RGB, PATCH_RGB, QC_COLUMNS, qc_table, render_qc
from slidesnake.tissue.segmentation import params_from_config, segment_slide, write_tissue


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    d = tmp_path_factory.mktemp("qc")
    good = write_aperio(d / "good.svs", tissue_slide()[0], mpp=0.25)
    bad = d / "bad.svs"
    bad.write_text("not a slide")
    params = params_from_config("default", {"a_t": 0.5, "a_h": 0.5})
    records = {"good": segment_slide(good, params, slide_id="good"), "bad": segment_slide(bad, params, slide_id="bad")}
    rows = []
    for name, record in records.items():
        write_tissue(d / f"{name}.json", record)
        mags = {mag: d / f"{name}_{mag}x.h5" for mag in (5, 20)}
        for mag, path in mags.items():
            patch_slide(record, mag, path)
        rows.append((name, str(d / f"{name}.json"), {mag: str(p) for mag, p in mags.items()}))
    return d, records, rows


def _read_rgb(path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


def _has_colour(image: np.ndarray, rgb) -> np.ndarray:
    return np.abs(image.astype(int) - rgb).sum(-1) <= 3


def test_qc_png_draws_contours_holes_and_patches_in_place(cohort):
    d, records, _ = cohort
    record = records["good"]
    coords = patch_coords(record, 5)
    render_qc(record["path"], record, coords, d / "good.png")
    image = _read_rgb(d / "good.png")
    assert image.shape == (768, 1024, 3)  # 4096 × 3072 slide, longest side 1024: scale 4
    ys, xs = np.nonzero(_has_colour(image, CONTOUR_RGB))
    # contours: big block (512..2560, 512..2048) and small (3072..3584, 2304..2816) → /4
    assert (
        abs(xs.min() - 128) <= 8 and abs(xs.max() - 896) <= 8 and abs(ys.min() - 128) <= 8 and abs(ys.max() - 704) <= 8
    )
    ys, xs = np.nonzero(_has_colour(image, HOLE_RGB))
    assert abs(xs.min() - 320) <= 8 and abs(xs.max() - 448) <= 8  # hole 1280..1792 / 4
    ys, xs = np.nonzero(_has_colour(image, PATCH_RGB))
    assert xs.min() == 0 and ys.min() == 0 and xs.max() == 1023  # 2048 px cells at (0,0) … (2048, 2048)


def test_qc_png_placeholder_for_unreadable(cohort):
    d, records, _ = cohort
    record = records["bad"]
    render_qc(record["path"], record, None, d / "bad.png")
    image = _read_rgb(d / "bad.png")
    assert image.shape == (128, 512, 3)
    assert (image[..., 0] > 150).any() and ((image[..., 1] < 80) & (image[..., 0] > 150)).any()  # red status text


def test_qc_table_lists_every_slide(cohort):
    _, records, rows = cohort
    table = qc_table(rows)
    assert list(table.columns) == QC_COLUMNS and list(table["slide"]) == ["good", "bad"]
    good, bad = table.iloc[0], table.iloc[1]
    assert good["status"] == "ok" and good["mpp"] == 0.25 and good["mpp_source"] == "openslide.mpp-x"
    assert good["patches_5x"] == len(patch_coords(records["good"], 5)) > 0
    assert good["patches_20x"] == len(patch_coords(records["good"], 20)) > good["patches_5x"]
    assert good["tissue_mm2"] == pytest.approx(records["good"]["tissue_area_mm2"])
    assert bad["status"].startswith("unreadable: ") and bad["patches_5x"] == 0 and bad["patches_20x"] == 0
    assert np.isnan(bad["mpp"]) and bad["mpp_source"] == ""
    assert table["patches_5x"].dtype == np.int64
