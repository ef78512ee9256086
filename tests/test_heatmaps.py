"""Heatmaps: scores land on the right thumbnail pixels, the top-k strip shows the right patches, and a
50,000-patch bag is scored with bounded memory through a real train_fold checkpoint."""

import h5py
import numpy as np
import pytest
import torch
from _mil_fixtures import PATCH, write_cohort
from matplotlib import colormaps
from PIL import Image

from slidesnake.evaluate.heatmaps import (
    CAPTION_PX,
    COLORBAR_PX,
    STRIP_GAP_PX,
    TITLE_PX,
    HeatmapInputError,
    attention_scores,
    percentile_scores,
    rasterize,
    render_heatmap,
    render_top_patches,
    slide_heatmaps,
    top_indices,
)
from slidesnake.hierarchy import link_files
from slidesnake.io.atomic import write_h5
from slidesnake.io.checkpoint import save_checkpoint
from slidesnake.io.slide import open_slide, read_patch, read_plan, slide_info
from slidesnake.io.svs import write_svs
from slidesnake.models.mil import build_model
from slidesnake.tasks import task_from_config, task_labels
from slidesnake.train.loop import TrainParams, train_fold
from slidesnake.train.splits import make_splits

torch.set_num_threads(1)


def _png(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    """A 2048 x 1536 Aperio slide at 0.25 µm/px (40x) whose 128-px level-0 cells each have their own colour."""
    rng = np.random.default_rng(3)
    cells = rng.integers(30, 226, size=(1536 // 128, 2048 // 128, 3), dtype=np.uint8)
    image = np.repeat(np.repeat(cells, 128, axis=0), 128, axis=1)
    return write_svs(
        tmp_path_factory.mktemp("slide") / "SLIDE-A.svs", image, mpp=0.25, app_mag=40.0, downsamples=(1, 4)
    )


def test_percentile_scores_are_ranks():
    assert np.allclose(percentile_scores(np.array([0.1, 0.4, 0.2, 0.3])), [0, 1, 1 / 3, 2 / 3])
    assert np.allclose(percentile_scores(np.array([5.0, 5.0, 1.0])), [0.75, 0.75, 0.0])  # ties share a rank
    assert np.allclose(percentile_scores(np.array([7.0])), [1.0])


def test_rasterize_tiles_a_grid_without_gaps_at_fractional_scale():
    coords = np.array([(x, y) for y in range(0, 768, 256) for x in range(0, 768, 256)])
    values = np.arange(9, dtype=float)
    raster = rasterize(coords, values, 256, (300, 300), (0.3, 0.3))
    edges = [0, 77, 154, 230]  # round(0.3 * 256k)
    assert np.isnan(raster[230:, :]).all() and np.isnan(raster[:, 230:]).all()
    for i in range(9):
        r, c = divmod(i, 3)
        block = raster[edges[r] : edges[r + 1], edges[c] : edges[c + 1]]
        assert np.all(block == values[i])  # no pixel shared with a neighbour


def test_rasterize_averages_overlaps_and_keeps_tiny_patches():
    raster = rasterize(np.array([[0, 0], [128, 0]]), np.array([1.0, 3.0]), 256, (10, 10), (0.01, 0.01))
    # columns [0, 3) and [1, 4): pixel 0 only the first, 1-2 both (mean), 3 only the second
    assert list(raster[0, :4]) == [1.0, 2.0, 2.0, 3.0] and np.isnan(raster[0, 4])
    tiny = rasterize(np.array([[5000, 5000]]), np.array([5.0]), 16, (100, 100), (0.01, 0.01))
    assert tiny[50, 50] == 5.0 and np.isnan(tiny).sum() == 100 * 100 - 1  # a sub-pixel patch still gets one pixel


def test_heatmap_colours_land_at_patch_pixels(slide, tmp_path):
    thumb = np.asarray(open_slide(slide).get_thumbnail((512, 512)).convert("RGB"))
    assert thumb.shape == (384, 512, 3)  # scale 0.25: a 256-px level-0 patch is 64 thumbnail px
    coords = np.array([[0, 0], [512, 256], [1024, 1024], [1792, 1280]])
    scores = np.array([0.1, 0.4, 0.2, 0.3], dtype=np.float32)
    out = tmp_path / "heat.png"
    image = render_heatmap(slide, coords, scores, 256, out, thumbnail_max=512, alpha=0.5, title="SLIDE-A")
    png = _png(out)
    assert png.shape == (384 + TITLE_PX, 512 + COLORBAR_PX, 3)
    assert np.array_equal(png[TITLE_PX:, :512], image)  # drawn 1:1, no resampling
    jet = colormaps["jet"]
    for (x, y), pct in zip(coords // 4, [0.0, 1.0, 1 / 3, 2 / 3]):
        expected = np.rint(0.5 * thumb[y : y + 64, x : x + 64] + 0.5 * 255 * np.array(jet(pct)[:3]))
        assert np.abs(image[y : y + 64, x : x + 64].astype(int) - expected).max() <= 1
    assert np.array_equal(image[64:128, :64], thumb[64:128, :64])  # uncovered pixels keep the slide
    red = image[64 + 32, 128 + 32].astype(int) - thumb[64 + 32, 128 + 32]
    blue = image[32, 32].astype(int) - thumb[32, 32]
    assert red[0] > red[2] and blue[2] > blue[0]  # top score hot (red), lowest cold (blue)


def test_heatmap_of_empty_bag_is_the_thumbnail(slide, tmp_path):
    image = render_heatmap(
        slide, np.zeros((0, 2), np.int64), np.zeros(0, np.float32), 256, tmp_path / "e.png", thumbnail_max=256
    )
    thumb = np.asarray(open_slide(slide).get_thumbnail((256, 256)).convert("RGB"))
    assert np.array_equal(image, thumb) and (tmp_path / "e.png").is_file()


def test_top_patch_strip_shows_highest_scoring_patches(slide, tmp_path):
    features_h5 = tmp_path / "f.h5"
    coords = np.array([[0, 0], [256, 0], [512, 512], [1024, 768], [1536, 1280], [768, 256]], np.int64)
    write_h5(features_h5, {"features": np.zeros((6, 4), np.float32), "coords": coords},
             {"magnification": 20.0, "patch_size": 64, "patch_size_level0": 128})  # fmt: skip
    scores = np.array([0.05, 0.3, 0.1, 0.9, 0.2, 0.5])
    out = tmp_path / "top.png"
    chosen = render_top_patches(slide, coords, scores, features_h5, out, k=3)
    assert list(chosen) == [3, 5, 1]
    png = _png(out)
    assert png.shape == (64 + CAPTION_PX, 3 * 64 + 2 * STRIP_GAP_PX, 3)
    plan = read_plan(slide_info(slide), 20.0, 64)
    assert plan.read_level == 0 and plan.read_size == 128  # 20x on a 40x slide: 128 level-0 px → 64 px
    handle = open_slide(slide)
    for i, idx in enumerate(chosen):
        direct = read_patch(handle, *coords[idx], plan)
        x = i * (64 + STRIP_GAP_PX)
        assert np.array_equal(png[CAPTION_PX:, x : x + 64], direct)
    handle.close()
    assert list(top_indices(np.array([1.0, 2.0, 2.0]), 5)) == [1, 2, 0]  # k > N, ties keep file order


def test_top_patch_strip_needs_magnification_attrs(slide, tmp_path):
    with pytest.raises(HeatmapInputError, match="magnification"):
        render_top_patches(slide, np.zeros((1, 2), np.int64), np.ones(1), {"patch_size": 64}, tmp_path / "x.png")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Real model.pt files from one short train_fold each (ABMIL and the hierarchical model)."""
    root = tmp_path_factory.mktemp("ckpt")
    sheet, feats, hiers = write_cohort(root, n_patients=6, n_instances=32, dim=16)
    task = task_from_config("subtype", {"kind": "classification", "column": "label"})
    labels, folds = task_labels(task, sheet), make_splits(sheet, k=3, seed=0)
    params = TrainParams(epochs=1, model_kwargs={"hidden": 32, "attn_dim": 16})
    for name in ("abmil", "hipt"):
        train_fold(task, name, feats, labels, folds, 0, params, str(root / name), hierarchy=hiers)
    return root, feats, hiers


def _rss_peak_mb() -> tuple[float, float]:
    status = dict(line.split(":", 1) for line in open("/proc/self/status").read().splitlines())
    return float(status["VmRSS"].split()[0]) / 1024, float(status["VmHWM"].split()[0]) / 1024


def test_attention_scores_of_50k_bag_are_memory_bounded(checkpoints, tmp_path):
    root, _, _ = checkpoints
    rng = np.random.default_rng(0)
    n = 50_000
    features = rng.normal(size=(n, 16)).astype(np.float32)
    coords = (np.stack(np.divmod(np.arange(n), 250), axis=1)[:, ::-1] * PATCH).astype(np.int64)
    write_h5(tmp_path / "big.h5", {"features": features, "coords": coords})
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak-RSS counter (VmHWM)
    except OSError:
        pytest.skip("cannot reset peak RSS on this kernel")
    before, _ = _rss_peak_mb()
    got_coords, scores = attention_scores(root / "abmil/model.pt", tmp_path / "big.h5", device="cpu")
    _, peak = _rss_peak_mb()
    assert peak - before < 256, (
        f"peak RSS grew by {peak - before:.0f} MB for a 50k bag"
    )  # an N x N matrix alone is 10 GB
    assert np.array_equal(got_coords, coords) and scores.shape == (n,) and scores.dtype == np.float32
    assert abs(float(scores.sum()) - 1.0) < 1e-3  # ABMIL attention is a softmax over the bag
    checkpoint = torch.load(root / "abmil/model.pt", weights_only=True)
    model = build_model("abmil", 16, 2, **checkpoint["model_kwargs"])
    model.load_state_dict(checkpoint["state_dict"])
    model.eval()
    with torch.inference_mode():
        expected = model(torch.from_numpy(features[:1000])).attention.numpy()
    small = tmp_path / "small.h5"
    write_h5(small, {"features": features[:1000], "coords": coords[:1000]})
    assert np.allclose(
        attention_scores(root / "abmil/model.pt", small)[1], expected, atol=1e-6
    )  # eval mode: no dropout


def test_hierarchical_scores_map_to_parent_coords(checkpoints, tmp_path):
    root, feats, hiers = checkpoints
    slide_id = next(iter(hiers))
    with pytest.raises(HeatmapInputError, match="hierarchy"):
        attention_scores(root / "hipt/model.pt", feats[slide_id])
    coords, scores = attention_scores(root / "hipt/model.pt", feats[slide_id], hiers[slide_id])
    with h5py.File(hiers[slide_id], "r") as f:
        parents = f["parent_coords"][()]
    assert np.array_equal(coords, parents) and len(scores) == len(parents) > 1
    assert abs(float(scores.sum()) - 1.0) < 1e-5


def test_attention_scores_reject_wrong_dim_and_pass_empty_bags(checkpoints, tmp_path):
    root, _, _ = checkpoints
    write_h5(tmp_path / "d8.h5", {"features": np.zeros((3, 8), np.float32), "coords": np.zeros((3, 2), np.int64)})
    with pytest.raises(HeatmapInputError, match="16-d"):
        attention_scores(root / "abmil/model.pt", tmp_path / "d8.h5")
    write_h5(tmp_path / "empty.h5", {"features": np.zeros((0, 16), np.float32), "coords": np.zeros((0, 2), np.int64)})
    coords, scores = attention_scores(root / "abmil/model.pt", tmp_path / "empty.h5")
    assert coords.shape == (0, 2) and scores.shape == (0,)


def _slide_features(root, slide, dim=16):
    """20x and 5x features of the fixture slide (0.25 µm/px: 512 / 2048 level-0 px) and their hierarchy."""
    rng = np.random.default_rng(1)
    c20 = np.array([(x, y) for y in range(0, 1536, 512) for x in range(0, 2048, 512)], np.int64)
    attrs = {
        "encoder": "synthetic",
        "magnification": 20.0,
        "patch_size": 256,
        "patch_size_level0": 512,
    }  # the encoder the fixture models were trained on (checkpoints refuse others)
    write_h5(root / "f20.h5", {"features": rng.normal(size=(12, dim)).astype(np.float32), "coords": c20}, attrs)
    attrs5 = {**attrs, "magnification": 5.0, "patch_size_level0": 2048}
    write_h5(
        root / "f5.h5",
        {"features": rng.normal(size=(1, dim)).astype(np.float32), "coords": np.zeros((1, 2), np.int64)},
        attrs5,
    )
    link_files(root / "f5.h5", root / "f20.h5", root / "hier.h5")
    return c20


def test_slide_heatmaps_writes_both_figures_from_file_attrs(checkpoints, slide, tmp_path):
    root, _, _ = checkpoints
    c20 = _slide_features(tmp_path, slide)
    n = slide_heatmaps(
        root / "abmil/model.pt",
        slide,
        tmp_path / "f20.h5",
        tmp_path / "h.png",
        tmp_path / "t.png",
        k=4,
        thumbnail_max=256,
    )
    assert n == 12
    assert _png(tmp_path / "h.png").shape == (192 + TITLE_PX, 256 + COLORBAR_PX, 3)
    coords, scores = attention_scores(root / "abmil/model.pt", tmp_path / "f20.h5")
    top = _png(tmp_path / "t.png")
    assert top.shape == (256 + CAPTION_PX, 4 * 256 + 3 * STRIP_GAP_PX, 3)
    best = c20[np.argmax(scores)]
    with open_slide(slide) as handle:
        assert np.array_equal(
            top[CAPTION_PX:, :256], read_patch(handle, *best, read_plan(slide_info(slide), 20.0, 256))
        )


def test_slide_heatmaps_hierarchical_reads_parents_at_5x(checkpoints, slide, tmp_path):
    root, _, _ = checkpoints
    _slide_features(tmp_path, slide)
    n = slide_heatmaps(root / "hipt/model.pt", slide, tmp_path / "f20.h5", tmp_path / "h.png", tmp_path / "t.png",
                       hierarchy_h5=tmp_path / "hier.h5", thumbnail_max=256)  # fmt: skip
    assert n == 1  # one 5x parent holds all twelve 20x patches
    plan5 = read_plan(slide_info(slide), 5.0, 256)
    assert plan5.patch_size_level0 == 2048
    with open_slide(slide) as handle:
        assert np.array_equal(_png(tmp_path / "t.png")[CAPTION_PX:, :256], read_patch(handle, 0, 0, plan5))
    with pytest.raises(HeatmapInputError, match="not built from"):
        slide_heatmaps(
            root / "hipt/model.pt",
            slide,
            tmp_path / "f5.h5",
            tmp_path / "h.png",
            tmp_path / "t.png",
            hierarchy_h5=tmp_path / "hier.h5",
        )


def test_top_patch_strip_of_empty_bag_reads_nothing(tmp_path):
    chosen = render_top_patches(tmp_path / "missing.svs", np.zeros((0, 2)), np.zeros(0), {}, tmp_path / "t.png")
    assert len(chosen) == 0 and (tmp_path / "t.png").is_file()


def _checkpoint(tmp_path, name: str, kind: str, n_outputs: int, **kwargs) -> tuple:
    torch.manual_seed(0)
    model = build_model(name, 16, n_outputs, **kwargs)
    path = tmp_path / f"{name}.pt"
    save_checkpoint(path, {"state_dict": model.state_dict(), "model": name, "in_dim": 16, "n_outputs": n_outputs,
                           "model_kwargs": kwargs, "task": {"kind": kind}, "classes": [], "params": {}})  # fmt: skip
    return path, model.eval()


def test_meanpool_map_is_the_predicted_class_logit_and_for_survival_the_instance_risk(tmp_path):
    from slidesnake.train.losses import survival_risk

    rng = np.random.default_rng(1)
    features = rng.normal(size=(40, 16)).astype(np.float32)
    write_h5(tmp_path / "f.h5", {"features": features, "coords": np.zeros((40, 2), np.int64)})
    x = torch.from_numpy(features)
    path, model = _checkpoint(tmp_path, "meanpool", "classification", 3, hidden=8)
    with torch.inference_mode():
        out = model(x)
        expected = model.classifier(model.embed(x))[:, int(out.logits.argmax())]
    assert np.allclose(attention_scores(path, tmp_path / "f.h5", device="cpu")[1], expected.numpy(), atol=1e-6)
    path, model = _checkpoint(tmp_path, "meanpool", "survival", 4, hidden=8)
    with torch.inference_mode():
        risk = survival_risk(model.classifier(model.embed(x)))
        last_bin = model.classifier(model.embed(x))[:, -1]
    scores = attention_scores(path, tmp_path / "f.h5", device="cpu")[1]
    assert np.allclose(scores, risk.numpy(), atol=1e-6)
    assert not np.allclose(np.argsort(scores), np.argsort(last_bin.numpy()))  # not the longest-time bin


def test_every_model_states_what_its_map_shows_and_the_figure_prints_it(slide, tmp_path, monkeypatch):
    from slidesnake.evaluate import heatmaps
    from slidesnake.models.mil import MODELS

    shows = {name: cls.map_shows for name, cls in MODELS.items()}
    assert all(isinstance(s, str) and len(s) > 10 for s in shows.values())
    assert "class-token attention" in shows["transmil"] and "predicted class" in shows["meanpool"]
    assert heatmaps.map_description({"model": "transmil"}) == f"transmil: {shows['transmil']}"
    texts = []
    real_text = heatmaps.Figure.text

    def spy(self, x, y, s, *args, **kwargs):
        texts.append(s)
        return real_text(self, x, y, s, *args, **kwargs)

    monkeypatch.setattr(heatmaps.Figure, "text", spy)
    coords = np.array([[0, 0], [256, 0]])
    render_heatmap(slide, coords, np.array([0.2, 0.8]), 256, tmp_path / "a.png", thumbnail_max=256,
                   map_shows=heatmaps.map_description({"model": "transmil"}))  # fmt: skip
    assert f"map: transmil: {shows['transmil']}" in texts
    render_heatmap(slide, coords, np.array([0.2, 0.8]), 256, tmp_path / "b.png", thumbnail_max=256)
    a, b = _png(tmp_path / "a.png"), _png(tmp_path / "b.png")
    assert not np.array_equal(a[:TITLE_PX], b[:TITLE_PX]) and np.array_equal(a[TITLE_PX:], b[TITLE_PX:])
