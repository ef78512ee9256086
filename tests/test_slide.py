"""Slide reading: mpp provenance order, level choice, patch sizes and exact patch reads."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from _slide_fixtures import glass, paint, write_aperio, write_generic

from slidesnake.io.slide import (
    ResolutionError,
    SlideInfo,
    UnreadableSlideError,
    mag_to_mpp,
    open_slide,
    patch_size_level0,
    read_patch,
    read_plan,
    read_region_rgb,
    resolve_mpp,
    rgba_to_rgb,
    slide_info,
)
from slidesnake.io.svs import write_svs

RED, BLUE = (220, 40, 40), (40, 40, 220)


@pytest.fixture(scope="module")
def slides(tmp_path_factory) -> dict[str, Path]:
    """One slide per resolution case: left half red, right half blue, 2048 × 1536."""
    d = tmp_path_factory.mktemp("slides")
    image = paint(paint(glass(2048, 1536), (0, 0, 1024, 1536), RED), (1024, 0, 2048, 1536), BLUE)
    return {
        "aperio40": write_aperio(d / "aperio40.svs", image, mpp=0.2527, app_mag=40),
        "native20": write_aperio(d / "native20.svs", image, mpp=0.5, app_mag=20),
        "tiff": write_generic(d / "generic.tif", image, mpp=0.5),
        "single": write_svs(d / "single.svs", image, mpp=0.5, app_mag=20, downsamples=(1,)),
        "power_only": write_aperio(d / "power.svs", image, mpp=None, app_mag=40),
        "neither": write_aperio(d / "neither.svs", image, mpp=None, app_mag=None),
        "coarse": write_aperio(d / "coarse.svs", image, mpp=1.0, app_mag=10),
    }


def _info(mpp: float, downsamples=(1.0, 4.0, 16.0)) -> SlideInfo:
    dims = tuple((int(40000 / d), int(30000 / d)) for d in downsamples)
    return SlideInfo("s.svs", 40000, 30000, mpp, "openslide.mpp-x", dims, tuple(downsamples), "aperio", 40.0)


def test_mag_to_mpp_and_patch_sizes_nest_exactly():
    assert mag_to_mpp(20) == 0.5 and mag_to_mpp(5) == 2.0
    # Aperio 40x: 256 * 0.5 / 0.2527 = 506.5 -> 507; 5x is exactly 4x, 10x exactly 2x, 2.5x 8x
    assert patch_size_level0(0.2527, 20) == 507
    assert patch_size_level0(0.2527, 5) == 4 * 507
    assert patch_size_level0(0.2527, 10) == 2 * 507
    assert patch_size_level0(0.2527, 2.5) == 8 * 507
    assert patch_size_level0(0.5, 20) == 256 and patch_size_level0(0.5, 5) == 1024
    assert patch_size_level0(0.25, 40) == 256  # finer than 20x: direct rounding
    with pytest.raises(ValueError):
        mag_to_mpp(0)


def test_resolve_mpp_order_and_sources():
    tags = {"tiff.ResolutionUnit": "inch", "tiff.XResolution": "50800"}  # 25400 / 50800 = 0.5 µm
    assert resolve_mpp({"openslide.mpp-x": "0.2527", **tags}) == (0.2527, "openslide.mpp-x")
    assert resolve_mpp(tags) == (0.5, "tiff.resolution")
    assert resolve_mpp({"openslide.vendor": "generic-tiff", "openslide.mpp-x": "0.5"}) == (0.5, "tiff.resolution")
    assert resolve_mpp({"tiff.ResolutionUnit": "none", "tiff.XResolution": "1", "openslide.objective-power": "40"}) == (
        0.25,
        "objective-power",
    )
    assert resolve_mpp({"openslide.mpp-x": "0"}, fallback_mpp=0.3) == (0.3, "config-fallback")
    assert resolve_mpp({}) == (None, None)


def test_slide_info_on_real_files(slides):
    cases = {
        "aperio40": (0.2527, "openslide.mpp-x"),
        "native20": (0.5, "openslide.mpp-x"),
        "tiff": (0.5, "tiff.resolution"),
        "single": (0.5, "openslide.mpp-x"),
        "power_only": (0.25, "objective-power"),
    }
    for name, (mpp, source) in cases.items():
        info = slide_info(slides[name])
        assert info.mpp == pytest.approx(mpp) and info.mpp_source == source, name
        assert (info.width, info.height) == (2048, 1536)
    assert slide_info(slides["single"]).level_downsamples == (1.0,)
    assert slide_info(slides["aperio40"]).vendor == "aperio"
    with pytest.raises(ResolutionError, match="neither.svs.*set mpp_fallback"):
        slide_info(slides["neither"])
    info = slide_info(slides["neither"], fallback_mpp=0.25)
    assert (info.mpp, info.mpp_source) == (0.25, "config-fallback")


def test_read_plan_picks_coarsest_level_not_coarser_than_target():
    aperio = _info(0.2527)
    p20, p5 = read_plan(aperio, 20), read_plan(aperio, 5)
    assert (p20.read_level, p20.read_size, p20.patch_size_level0) == (0, 507, 507)
    assert (p5.read_level, p5.read_downsample, p5.read_size, p5.patch_size_level0) == (1, 4.0, 507, 2028)
    native = _info(0.5)
    assert (read_plan(native, 20).read_level, read_plan(native, 20).read_size) == (0, 256)
    assert (read_plan(native, 5).read_level, read_plan(native, 5).read_size) == (1, 256)
    single = _info(0.5, downsamples=(1.0,))
    assert (read_plan(single, 5).read_level, read_plan(single, 5).read_size) == (0, 1024)
    # 0.52 µm/px is within the 5% tolerance of 0.5: read natively, no upsampling flag
    assert read_plan(_info(0.52), 20).upsample is False
    coarse = _info(1.0)
    with pytest.raises(ResolutionError, match=r"s\.svs.*coarser than 20x.*allow_upsample"):
        read_plan(coarse, 20)
    up = read_plan(coarse, 20, allow_upsample=True)
    assert (up.read_level, up.read_size, up.upsample) == (0, 128, True)


def test_read_patch_reads_the_right_region_at_target_resolution(slides):
    for name in ("aperio40", "native20", "tiff", "single"):
        slide = open_slide(slides[name])
        info = slide_info(slide)
        for mag in (20, 5):
            plan = read_plan(info, mag)
            size0 = plan.patch_size_level0
            # patch straddling the red/blue border at x=1024; its top 150 rows lie inside the slide
            patch = read_patch(slide, 1024 - size0 // 2, 0, plan)
            assert patch.shape == (256, 256, 3) and patch.dtype == np.uint8
            left, right = patch[:150, :100].reshape(-1, 3).mean(0), patch[:150, 156:].reshape(-1, 3).mean(0)
            assert np.allclose(left, RED, atol=12), (name, mag, left)
            assert np.allclose(right, BLUE, atol=12), (name, mag, right)
        slide.close()


def test_read_patch_outside_the_slide_is_white(slides):
    slide = open_slide(slides["native20"])
    patch = read_patch(slide, 2048 - 128, 1536 - 128, read_plan(slide_info(slide), 20))
    assert (patch[200:, 200:] == 255).all()
    assert np.allclose(patch[:100, :100].reshape(-1, 3).mean(0), BLUE, atol=12)


def test_upsampled_read_has_patch_size(slides):
    slide = open_slide(slides["coarse"])
    plan = read_plan(slide_info(slide), 20, allow_upsample=True)
    assert plan.read_size == 128 and read_patch(slide, 0, 0, plan).shape == (256, 256, 3)


def test_open_slide_errors_name_the_file(tmp_path):
    text = tmp_path / "notes.svs"
    text.write_text("not a slide")
    with pytest.raises(UnreadableSlideError, match="notes.svs"):
        open_slide(text)
    with pytest.raises(UnreadableSlideError, match="missing.svs: file not found"):
        open_slide(tmp_path / "missing.svs")


def _schema_has(dotted: str) -> bool:
    """True when a dotted config key (e.g. patching.allow_upsample) is a property path of the schema."""
    root = Path(__file__).resolve().parents[1]
    schema_path = next(p for p in (root / "slidesnake" / "schema.yaml", root / "config" / "schema.yaml") if p.exists())
    node = yaml.safe_load(schema_path.read_text())
    for part in dotted.split("."):
        node = (node.get("properties") or {}).get(part)
        if node is None:
            return False
    return True


def test_resolution_errors_name_config_keys_that_exist(slides):
    messages = []
    with pytest.raises(ResolutionError) as no_mpp:
        slide_info(slides["neither"])
    messages.append(str(no_mpp.value))
    with pytest.raises(ResolutionError) as coarse:
        read_plan(_info(2.0), 20)
    messages.append(str(coarse.value))
    with pytest.raises(ValueError) as bad_fallback:
        resolve_mpp({}, fallback_mpp=-1)
    messages.append(str(bad_fallback.value))
    named = {k for m in messages for k in re.findall(r"\b(mpp_fallback|[a-z_]+\.[a-z_]+(?:\.[a-z_]+)*)\b", m)}
    named = {k for k in named if not k.endswith((".svs", ".tif")) and not k.startswith(("openslide.", "tiff."))}
    assert {"mpp_fallback", "patching.allow_upsample", "patching.magnifications"} <= named
    assert all(_schema_has(k) for k in named), named
    assert "fallback_mpp" not in " ".join(messages)


def test_read_region_rgb_equals_openslide_rgba_composited_on_white(tmp_path):
    image = glass(1000, 700)
    paint(image, (100, 100, 600, 500), (200, 120, 170))
    path = write_aperio(tmp_path / "r.svs", image, mpp=0.5, app_mag=20)
    slide = open_slide(path)
    # inside, across the right/bottom edge (transparent beyond the slide) and at a coarser level
    for location, level, size in (((50, 60), 0, (300, 200)), ((900, 600), 0, (256, 256)), ((-40, -40), 1, (120, 90))):
        ours = read_region_rgb(slide, location, level, size)
        reference = rgba_to_rgb(np.asarray(slide.read_region(location, level, size)))
        assert ours.shape == (size[1], size[0], 3) and ours.dtype == np.uint8
        np.testing.assert_array_equal(ours, reference)
    outside = read_region_rgb(slide, (990, 690), 0, (20, 20))
    assert (outside[15:, 15:] == 255).all()  # beyond the slide reads as white glass
