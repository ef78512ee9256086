"""Feature extraction: right pixels at the right resolution, rows in coords order, one read per patch."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import slidesnake.features.extract as extract_mod
from slidesnake.features.device import DeviceUnavailableError, select_device
from slidesnake.features.encoders import OPENAI_MEAN, Encoder, EncoderSpec, load_encoder
from slidesnake.features.extract import CoordsMismatchError, _BatchEncoder, extract_features
from slidesnake.io.slide import open_slide, read_patch, read_plan, slide_info
from tests._feature_fixtures import CELL, GRID, cell_rgb, colour_grid_slide, coords_file, save_open_clip_folder, tiny_open_clip

BLOCK = 64  # a 5x patch of 256 px holds GRID x GRID cells of 64 px each


class BlockColourEncoder(Encoder):
    """Probe encoder: the feature is the mean RGB of each 64x64 block of the 256 px patch, raw 0..255."""

    def __init__(self) -> None:
        spec = EncoderSpec("probe", "test", "tiny", 256, (0.0, 0.0, 0.0), (1 / 255, 1 / 255, 1 / 255), 3 * GRID * GRID, False)
        super().__init__(spec, torch.nn.Identity(), 1.0)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        # (B,3,4,4) -> (B,4,4,3) -> (B,48): block (bx, by) at offset (by*4 + bx)*3
        return F.avg_pool2d(images, BLOCK).permute(0, 2, 3, 1).reshape(len(images), -1)

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        return torch.zeros(len(texts), self.spec.dim)


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    return colour_grid_slide(tmp_path_factory.mktemp("slide") / "grid.svs")


@pytest.fixture(scope="module")
def tiny_clip():
    return load_encoder("tiny-clip")


def _read(path, key="features"):
    with h5py.File(path, "r") as f:
        return f[key][()], dict(f.attrs)


def test_select_device_auto_is_cpu_without_cuda_and_cuda_must_exist():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert select_device("auto") == torch.device("cpu")
    assert select_device("cpu") == torch.device("cpu")
    with pytest.raises(DeviceUnavailableError, match="cuda"):
        select_device("cuda")


def test_features_show_expected_pixels_at_20x_and_5x(slide, tmp_path, monkeypatch):
    """A probe encoder sees each 20x patch as one flat cell and the 5x patch as the 4x4 cell mosaic."""
    monkeypatch.setattr(extract_mod, "load_encoder", lambda name, device="cpu": BlockColourEncoder())
    c20 = coords_file(tmp_path / "c20.h5", [(CELL * 2, CELL * 1), (0, CELL * 3)], mag=20, size0=CELL)
    c5 = coords_file(tmp_path / "c5.h5", [(0, 0)], mag=5, size0=CELL * GRID)
    extract_features(slide, c20, ["probe"], [str(tmp_path / "f20.h5")], num_workers=0)
    extract_features(slide, c5, ["probe"], [str(tmp_path / "f5.h5")], num_workers=0)

    f20, _ = _read(tmp_path / "f20.h5")
    for row, (cx, cy) in zip(f20, [(2, 1), (0, 3)]):
        np.testing.assert_allclose(row.reshape(GRID * GRID, 3), np.tile(cell_rgb(cx, cy), (GRID * GRID, 1)), atol=4)
    f5, attrs = _read(tmp_path / "f5.h5")
    expected = np.array([cell_rgb(bx, by) for by in range(GRID) for bx in range(GRID)], dtype=float)
    np.testing.assert_allclose(f5[0].reshape(GRID * GRID, 3), expected, atol=4)
    assert attrs["magnification"] == 5.0 and attrs["patch_size_level0"] == CELL * GRID


def test_features_equal_direct_model_call_in_coords_order(slide, tmp_path, tiny_clip):
    order = [(CELL * 3, 0), (0, 0), (CELL, CELL * 2), (CELL * 2, CELL * 3), (0, CELL)]
    c20 = coords_file(tmp_path / "c20.h5", order, mag=20, size0=CELL)
    out = tmp_path / "tiny.h5"
    assert extract_features(slide, c20, ["tiny-clip"], [str(out)], batch_size=2, num_workers=2) == [5]

    features, attrs = _read(out)
    coords, _ = _read(out, "coords")
    handle = open_slide(slide)
    plan = read_plan(slide_info(handle), 20, 256)
    patches = torch.from_numpy(np.stack([read_patch(handle, x, y, plan) for x, y in order]))
    with torch.inference_mode():
        direct = tiny_clip.encode_image(tiny_clip.preprocess(patches)).numpy()
    assert features.dtype == np.float32 and features.shape == (5, 64)
    np.testing.assert_array_equal(coords, np.array(order))
    np.testing.assert_allclose(features, direct, rtol=1e-4, atol=1e-5)
    assert not np.allclose(features[0], features[1])  # different cells -> different features
    assert attrs["encoder"] == "tiny-clip" and attrs["dim"] == 64 and not attrs["normalized"]
    assert attrs["target_mpp"] == 0.5


def test_one_read_feeds_several_encoders(slide, tmp_path, monkeypatch):
    folder = save_open_clip_folder(tmp_path / "oc", tiny_open_clip())
    reads = []

    def counting_read(handle, x, y, plan):
        reads.append((x, y))
        return read_patch(handle, x, y, plan)

    monkeypatch.setattr(extract_mod, "read_patch", counting_read)
    c20 = coords_file(tmp_path / "c20.h5", [(0, 0), (CELL, 0), (0, CELL)], mag=20, size0=CELL)
    outs = [str(tmp_path / "a.h5"), str(tmp_path / "b.h5")]
    assert extract_features(slide, c20, ["tiny-clip", str(folder)], outs, num_workers=0) == [3, 3]
    assert sorted(reads) == [(0, 0), (0, CELL), (CELL, 0)]
    assert _read(outs[0])[0].shape == (3, 64) and _read(outs[1])[0].shape == (3, 24)


def test_valid_existing_output_is_kept_and_stale_one_rewritten(slide, tmp_path):
    c20 = coords_file(tmp_path / "c20.h5", [(0, 0), (CELL, CELL)], mag=20, size0=CELL)
    out = tmp_path / "f.h5"
    extract_features(slide, c20, ["tiny-clip"], [str(out)], num_workers=0)
    stamp = out.stat().st_mtime_ns
    extract_features(slide, c20, ["tiny-clip"], [str(out)], num_workers=0)
    assert out.stat().st_mtime_ns == stamp
    c20b = coords_file(tmp_path / "c20b.h5", [(0, 0), (CELL, CELL), (CELL * 2, 0)], mag=20, size0=CELL)
    extract_features(slide, c20b, ["tiny-clip"], [str(out)], num_workers=0)
    assert _read(out)[0].shape == (3, 64)


def test_empty_coords_give_empty_features_without_reading_the_slide(tmp_path):
    c20 = coords_file(tmp_path / "empty.h5", [], mag=20, size0=CELL)
    out = tmp_path / "f.h5"
    assert extract_features(tmp_path / "missing.svs", c20, ["tiny-clip"], [str(out)]) == [0]
    features, attrs = _read(out)
    assert features.shape == (0, 64) and _read(out, "coords")[0].shape == (0, 2)
    assert attrs["encoder"] == "tiny-clip"


def test_coords_from_another_resolution_are_refused_naming_the_file(slide, tmp_path):
    bad = coords_file(tmp_path / "bad.h5", [(0, 0)], mag=20, size0=CELL * 2)
    with pytest.raises(CoordsMismatchError, match="bad.h5"):
        extract_features(slide, bad, ["tiny-clip"], [str(tmp_path / "f.h5")], num_workers=0)
    assert not (tmp_path / "f.h5").exists()


class _OomBelow(BlockColourEncoder):
    """Raises CUDA OOM for chunks above ``limit``, like a GPU that is too small for the batch."""

    limit = 3

    def encode_image(self, images):
        if len(images) > self.limit:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return super().encode_image(images)


def test_out_of_memory_halves_the_batch_and_gives_the_same_features():
    batch = torch.randint(0, 256, (10, 256, 256, 3), dtype=torch.uint8)
    expected = BlockColourEncoder().encode_image(BlockColourEncoder().preprocess(batch))
    runner = _BatchEncoder(_OomBelow(), chunk=10, channels_last=False)
    with pytest.warns(RuntimeWarning, match="out of memory"):
        got = runner(batch)
    assert runner.chunk == 2  # 10 -> 5 -> 2
    torch.testing.assert_close(got, expected)


def test_preprocess_accepts_both_layouts_and_normalises(tiny_clip):
    patch = torch.full((1, 64, 64, 3), 255, dtype=torch.uint8)
    hwc = tiny_clip.preprocess(patch)
    chw = tiny_clip.preprocess(patch.permute(0, 3, 1, 2))
    torch.testing.assert_close(hwc, chw)
    expected = (1.0 - torch.tensor(OPENAI_MEAN)) / torch.tensor(tiny_clip.spec.std)
    torch.testing.assert_close(hwc[0, :, 10, 10], expected)
