"""One tissue job per slide: JSON, aligned coords at both magnifications and the QC picture, bad slides included."""

from __future__ import annotations

import json

import h5py
import numpy as np

from slidesnake.io.svs import write_svs
from slidesnake.tissue.segmentation import SegmentationParams
from slidesnake.tissue.stage import run_tissue_stage


def _outputs(tmp_path):
    return tmp_path / "t.json", {5: tmp_path / "5x.h5", 20: tmp_path / "20x.h5"}, tmp_path / "qc.png"


def test_good_slide_gets_every_product_on_one_grid(tmp_path) -> None:
    img = np.full((4096, 4096, 3), 242, np.uint8)
    img[1024:3072, 1024:3072] = (150, 60, 160)
    slide = write_svs(tmp_path / "s.svs", img, mpp=0.25)
    tissue, coords, qc = _outputs(tmp_path)
    record = run_tissue_stage(slide, "s", SegmentationParams(a_t=1), tissue, coords, qc)
    assert record["status"] == "ok" and json.loads(tissue.read_text())["slide_id"] == "s"
    with h5py.File(coords[5]) as f5, h5py.File(coords[20]) as f20:
        assert f5.attrs["patch_size_level0"] == 4 * f20.attrs["patch_size_level0"] == 2048
        c5, c20 = f5["coords"][:], f20["coords"][:]
    assert len(c5) > 0 and len(c20) >= 16
    assert not (c5 % 2048).any() and not (c20 % 512).any()
    assert qc.stat().st_size > 0


def test_unreadable_slide_writes_statuses_not_exceptions(tmp_path) -> None:
    bad = tmp_path / "bad.svs"
    bad.write_bytes(b"II*\x00garbage")
    tissue, coords, qc = _outputs(tmp_path)
    record = run_tissue_stage(bad, "bad", SegmentationParams(), tissue, coords, qc)
    assert record["status"].startswith("unreadable")
    for path in coords.values():
        with h5py.File(path) as f:
            assert f["coords"].shape == (0, 2) and f.attrs["status"].startswith("unreadable")
    assert qc.stat().st_size > 0
