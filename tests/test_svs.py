"""The SVS / TIFF writers produce slides OpenSlide reads with the right vendor, levels and resolution."""

from __future__ import annotations

import numpy as np
import openslide
import pytest

from slidesnake.io.svs import write_svs, write_tiff


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    img = np.full((1200, 1600, 3), 240, np.uint8)
    img[400:800, 300:700] = (120, 40, 140)
    return img


def test_svs_is_aperio_with_levels_thumbnail_and_mpp(tmp_path, image) -> None:
    path = write_svs(tmp_path / "a.svs", image, mpp=0.2527, app_mag=40)
    with openslide.OpenSlide(path) as s:
        assert s.properties["openslide.vendor"] == "aperio"
        assert float(s.properties["openslide.mpp-x"]) == pytest.approx(0.2527)
        assert s.properties["openslide.objective-power"] == "40"
        assert s.level_dimensions == ((1600, 1200), (400, 300), (100, 75))
        assert "thumbnail" in s.associated_images
        pixel = np.asarray(s.read_region((500, 600), 0, (1, 1)).convert("RGB"))[0, 0]
    assert np.abs(pixel.astype(int) - (120, 40, 140)).max() <= 6


def test_svs_without_mpp_keeps_objective_power_only(tmp_path, image) -> None:
    with openslide.OpenSlide(write_svs(tmp_path / "b.svs", image, mpp=None, app_mag=20)) as s:
        assert "openslide.mpp-x" not in s.properties
        assert s.properties["openslide.objective-power"] == "20"


def test_region_callable_matches_array(tmp_path, image) -> None:
    def region(x, y, w, h, ds):
        full = image[:: int(ds), :: int(ds)] if ds > 1 else image
        return full[y : y + h, x : x + w] if ds == 1 else np.full((h, w, 3), 240, np.uint8)

    with openslide.OpenSlide(write_svs(tmp_path / "c.svs", region, size=(1600, 1200))) as s:
        pixel = np.asarray(s.read_region((500, 600), 0, (1, 1)).convert("RGB"))[0, 0]
    assert np.abs(pixel.astype(int) - (120, 40, 140)).max() <= 6


def test_generic_tiff_has_resolution_and_pyramid(tmp_path, image) -> None:
    with openslide.OpenSlide(write_tiff(tmp_path / "g.tif", image, mpp=0.5)) as s:
        assert s.properties["openslide.vendor"] == "generic-tiff"
        assert float(s.properties["openslide.mpp-x"]) == pytest.approx(0.5)
        assert len(s.level_dimensions) == 3
