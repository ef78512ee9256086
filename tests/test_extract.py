"""Feature extraction: right pixels at the right resolution, rows in coords order, one read per patch."""

from __future__ import annotations

import logging
import re

import cv2
import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import slidesnake.features.extract as extract_mod
from slidesnake.device import DeviceUnavailableError, select_device
from slidesnake.features.encoders import OPENAI_MEAN, OPENAI_STD, Encoder, EncoderSpec, load_encoder, resize_patch
from slidesnake.features.extract import CoordsMismatchError, CpuShare, _BatchEncoder, cpu_share, extract_features
from slidesnake.io.slide import open_slide, read_patch, read_plan, slide_info
from tests._feature_fixtures import (
    CELL,
    GRID,
    cell_rgb,
    colour_grid_slide,
    coords_file,
    save_open_clip_folder,
    tiny_open_clip,
)

BLOCK = 64  # a 5x patch of 256 px holds GRID x GRID cells of 64 px each


class BlockColourEncoder(Encoder):
    """Probe encoder: the feature is the mean RGB of each 64x64 block of the 256 px patch, raw 0..255."""

    def __init__(self) -> None:
        spec = EncoderSpec(
            "probe", "test", "tiny", 256, (0.0, 0.0, 0.0), (1 / 255, 1 / 255, 1 / 255), 3 * GRID * GRID, False
        )
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


def _documented_preprocess(patches: np.ndarray, size: int) -> torch.Tensor:
    """docs/encoders.md, spelled out: cv2 INTER_AREA to the input size in uint8, then (x/255 - mean)/std."""
    small = np.stack([cv2.resize(p, (size, size), interpolation=cv2.INTER_AREA) for p in patches])
    x = torch.from_numpy(small).permute(0, 3, 1, 2).float() / 255.0
    return (x - torch.tensor(OPENAI_MEAN).view(1, 3, 1, 1)) / torch.tensor(OPENAI_STD).view(1, 3, 1, 1)


def test_features_equal_direct_model_call_in_coords_order(slide, tmp_path, tiny_clip):
    order = [(CELL * 3, 0), (0, 0), (CELL, CELL * 2), (CELL * 2, CELL * 3), (0, CELL)]
    c20 = coords_file(tmp_path / "c20.h5", order, mag=20, size0=CELL)
    out = tmp_path / "tiny.h5"
    # batches of 2 over 5 patches: the first read in this process, the rest by 2 workers, in order
    assert extract_features(slide, c20, ["tiny-clip"], [str(out)], batch_size=2, num_workers=2) == [5]

    features, attrs = _read(out)
    coords, _ = _read(out, "coords")
    handle = open_slide(slide)
    plan = read_plan(slide_info(handle), 20, 256)
    patches = np.stack([read_patch(handle, x, y, plan) for x, y in order])
    with torch.inference_mode():
        direct = tiny_clip.model.encode_image(_documented_preprocess(patches, 64)).numpy()
    assert features.dtype == np.float32 and features.shape == (5, 64)
    np.testing.assert_array_equal(coords, np.array(order))
    np.testing.assert_allclose(features, direct, rtol=1e-4, atol=1e-5)
    assert not np.allclose(features[0], features[1])  # different cells -> different features
    assert attrs["encoder"] == "tiny-clip" and attrs["dim"] == 64 and not attrs["normalized"]
    assert attrs["target_mpp"] == 0.5


def test_loaded_encoder_is_accepted_and_cpu_threads_are_restored(slide, tmp_path, tiny_clip):
    c20 = coords_file(tmp_path / "c20.h5", [(0, 0), (CELL, CELL), (CELL * 2, 0)], mag=20, size0=CELL)
    threads = torch.get_num_threads()
    by_name, by_object = str(tmp_path / "name.h5"), str(tmp_path / "object.h5")
    extract_features(slide, c20, ["tiny-clip"], [by_name], batch_size=2, num_workers="auto")
    extract_features(slide, c20, [tiny_clip], [by_object], batch_size=2, num_workers=0)
    assert torch.get_num_threads() == threads
    np.testing.assert_allclose(_read(by_object)[0], _read(by_name)[0], rtol=1e-5, atol=1e-6)
    assert _read(by_object)[1]["encoder"] == "tiny-clip"
    with pytest.raises(ValueError, match="num_workers"):
        extract_features(slide, c20, ["tiny-clip"], [str(tmp_path / "bad.h5")], num_workers="many")


def test_cpu_share_splits_cores_by_measured_cost():
    # tiny model (0.4 ms/patch) behind 2 ms reads: one model thread, the readers get the rest
    assert cpu_share(read_s=2e-3, model_s=4e-4, cores=2, max_threads=2) == CpuShare(threads=1, workers=2)
    # ViT-B (100 ms/patch) behind the same reads never oversubscribes: on 2 cores reading in line costs
    # 2 ms per 50 ms of model; on 8 cores a dedicated reader core (100/7 ms per patch) beats 100/8 + 2
    assert cpu_share(read_s=2e-3, model_s=0.1, cores=2, max_threads=2) == CpuShare(threads=2, workers=0)
    assert cpu_share(read_s=2e-3, model_s=0.1, cores=8, max_threads=8) == CpuShare(threads=7, workers=1)
    assert cpu_share(read_s=2e-3, model_s=0.1, cores=1, max_threads=1) == CpuShare(threads=1, workers=0)
    assert cpu_share(read_s=1e-3, model_s=1e-3, cores=8, max_threads=8) == CpuShare(threads=4, workers=4)
    # a user's worker count is kept; the torch thread cap is respected
    assert cpu_share(read_s=2e-3, model_s=0.1, cores=8, max_threads=3, workers=0) == CpuShare(threads=3, workers=0)


def test_resize_is_an_exact_area_average_for_whole_factors():
    patch = np.kron(np.arange(16, dtype=np.uint8).reshape(4, 4) * 16, np.ones((64, 64), np.uint8))
    patch = np.repeat(patch[..., None], 3, axis=-1)
    patch[0, 0] = (255, 255, 255)  # one outlier pixel moves its 4x4 box mean by (255 - 0) / 16
    small = resize_patch(patch, 64)
    assert small.shape == (64, 64, 3)
    assert small[0, 0, 0] == 16 and small[0, 1, 0] == 0  # round(255/16) = 16, next box untouched
    np.testing.assert_array_equal(small[20, 20], [80, 80, 80])  # block (1, 1) holds 5 * 16
    assert resize_patch(small, 64) is small


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


def test_preprocess_accepts_both_layouts_normalises_and_resizes_like_the_workers(tiny_clip):
    patch = torch.full((1, 64, 64, 3), 255, dtype=torch.uint8)
    hwc = tiny_clip.preprocess(patch)
    chw = tiny_clip.preprocess(patch.permute(0, 3, 1, 2))
    torch.testing.assert_close(hwc, chw)
    expected = (1.0 - torch.tensor(OPENAI_MEAN)) / torch.tensor(tiny_clip.spec.std)
    torch.testing.assert_close(hwc[0, :, 10, 10], expected)
    big = torch.randint(0, 256, (2, 256, 256, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(tiny_clip.preprocess(big), _documented_preprocess(big.numpy(), 64))


def test_extraction_logs_progress_lines_and_copies_coords_dataset_attrs(slide, tmp_path, caplog):
    c20 = coords_file(tmp_path / "c20.h5", [(0, 0), (CELL, 0), (0, CELL), (CELL, CELL)], mag=20, size0=CELL)
    with h5py.File(c20, "a") as f:  # what patching writes on the dataset for CLAM/TRIDENT
        f["coords"].attrs.update(patch_level=0, level0_magnification=20.0, target_magnification=20.0)
    out = tmp_path / "f.h5"
    caplog.set_level(logging.INFO, logger="slidesnake.features.extract")
    # an interval this short logs a line per batch: the lines carry done/total, rate and ETA
    extract_features(slide, c20, ["tiny-clip"], [str(out)], batch_size=2, num_workers=0, progress_interval=1e-9)
    lines = [r.getMessage() for r in caplog.records if "patches/s" in r.getMessage()]
    assert re.match(r"features grid\.svs \[tiny-clip\]: 2/4 patches \(50\.0%\), [\d.]+ patches/s, .*ETA", lines[0])
    assert lines[-1].startswith("features grid.svs [tiny-clip]: 4/4 patches (100.0%)") and lines[-1].endswith("done")
    with h5py.File(out, "r") as f:
        assert f["coords"].attrs["target_magnification"] == 20.0 and f["coords"].attrs["patch_level"] == 0
