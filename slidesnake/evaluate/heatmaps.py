"""Attention heatmaps: per-instance scores of a trained MIL model drawn over the slide thumbnail, and
the top-scoring patches as an image strip.

Memory stays bounded for bags of 50,000 patches: the model runs once on the whole bag, and no zoo
model forms an N x N matrix (TransMIL uses Nystrom landmarks, RRT attends within regions; each model's
50k-patch forward is tested under 4 GB in tests/test_mil_models.py); scores are rasterised onto the
thumbnail-sized grid with a summed-area (difference array) trick instead of one draw call per patch,
and only the top-k patches are ever read from the slide.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from scipy.stats import rankdata

from slidesnake.device import select_device
from slidesnake.errors import InputError
from slidesnake.hierarchy import CHILDREN_PER_SIDE
from slidesnake.io.atomic import atomic_path
from slidesnake.io.checkpoint import load_checkpoint
from slidesnake.io.coords import plan_from_attrs, read_attrs
from slidesnake.io.slide import ReadPlan, open_slide, read_patch
from slidesnake.models import registry
from slidesnake.models.mil import build_model
from slidesnake.train.data import load_bag
from slidesnake.train.losses import survival_risk
from slidesnake.train.text_inputs import text_inputs_from_checkpoint

log = logging.getLogger(__name__)

# Figure layout in output pixels (dpi 100): the thumbnail is drawn 1:1 below a title band, with the
# colour bar to its right, so a thumbnail pixel is a PNG pixel (tests check colours at exact positions).
DPI = 100
PNG_COMPRESS_LEVEL = 1
TITLE_PX = 40
COLORBAR_PX = 110
CAPTION_PX = 36
STRIP_GAP_PX = 4


class HeatmapInputError(InputError):
    """A checkpoint and a features file do not fit together, or a model yields no instance scores."""


def attention_scores(
    model_pt: str | os.PathLike,
    features_h5: str | os.PathLike,
    hierarchy_h5: str | os.PathLike | None = None,
    device: str = "auto",
) -> tuple[np.ndarray, np.ndarray]:
    """Per-instance attention of the model in ``model_pt`` on one slide: (coords (N, 2) int64, scores (N,) float32).

    The model is rebuilt through the registry and run once on the whole bag in eval/inference mode.
    Models without attention must provide an instance score in ``MILOutput.attention`` (mean/max
    pooling do). The hierarchical model reads ``hierarchy_h5`` and scores each 5x parent, returned
    at its parent coords. An empty bag gives empty arrays without running the model.
    """
    checkpoint = load_checkpoint(model_pt, _features_identity(features_h5))
    return _scores(checkpoint, model_pt, features_h5, hierarchy_h5, device)


def _features_identity(features_h5: str | os.PathLike) -> dict[str, Any]:
    """The encoder and magnification a features h5 records: the model must have been trained on the same."""
    attrs = read_attrs(features_h5)
    return {"encoder": attrs.get("encoder"), "magnification": attrs.get("magnification")}


def _model_class(checkpoint: Mapping[str, Any]) -> type | None:
    entry = registry.entries().get(checkpoint["model"])
    return None if entry is None else entry.cls


def _is_hierarchical(checkpoint: Mapping[str, Any]) -> bool:
    model = _model_class(checkpoint)
    return model is not None and model.input_kind == "hierarchy"


def _scores(checkpoint, model_pt, features_h5, hierarchy_h5, device: str) -> tuple[np.ndarray, np.ndarray]:
    name = checkpoint["model"]
    bag_path = features_h5
    if _is_hierarchical(checkpoint):
        if hierarchy_h5 is None:
            raise HeatmapInputError(
                f"{model_pt}: model {name!r} scores 5x regions; pass its hierarchy (hier_5x_20x) h5"
            )
        bag_path = hierarchy_h5
    parents = bool(getattr(_model_class(checkpoint), "reads_parent_features", False))
    bag = load_bag(
        os.fspath(bag_path), "hierarchy" if _is_hierarchical(checkpoint) else "flat", parent_features=parents
    )
    coords = np.zeros((0, 2), np.int64) if bag.coords is None else bag.coords.numpy().astype(np.int64).reshape(-1, 2)
    if len(bag) == 0:
        log.info("%s: empty bag, no attention to compute", bag_path)
        return coords, np.zeros(0, np.float32)
    if bag.features.shape[-1] != checkpoint["in_dim"]:
        raise HeatmapInputError(
            f"{bag_path} has {bag.features.shape[-1]}-d features but {model_pt} was trained on {checkpoint['in_dim']}-d; "
            "use the features of the encoder the model was trained on"
        )
    torch_device = select_device(device)
    model = build_model(
        name,
        checkpoint["in_dim"],
        checkpoint["n_outputs"],
        **checkpoint["model_kwargs"],
        **text_inputs_from_checkpoint(checkpoint),  # vision-language models: the text tower and descriptions
    )
    model.load_state_dict(checkpoint["state_dict"])
    model.to(torch_device).eval()
    with torch.inference_mode():
        bag = bag.to(torch_device)
        out = model(bag.features, coords=bag.coords, mask=bag.mask, **bag.model_inputs())
    if out.attention is None:
        raise HeatmapInputError(
            f"model {name!r} ({model_pt}) returns no per-instance attention or score; no heatmap possible"
        )
    score = out.attention
    if out.instance_logits is not None and checkpoint.get("task", {}).get("kind") == "survival":
        score = survival_risk(out.instance_logits)  # each instance's own risk, not one hazard bin
    scores = score.detach().float().cpu().numpy().reshape(-1)
    if len(scores) != len(coords):
        raise HeatmapInputError(
            f"model {name!r} returned {len(scores)} instance scores for {len(coords)} instances of {bag_path}"
        )
    return coords, scores.astype(np.float32)


def slide_heatmaps(
    model_pt: str | os.PathLike,
    slide_path: str | os.PathLike,
    features_h5: str | os.PathLike,
    heatmap_png: str | os.PathLike,
    top_png: str | os.PathLike,
    *,
    hierarchy_h5: str | os.PathLike | None = None,
    k: int = 8,
    thumbnail_max: int = 2048,
    device: str = "auto",
    fallback_mpp: float | None = None,
    title: str | None = None,
) -> int:
    """Score one slide and write its heatmap and top-k strip (the per-slide heatmap rule); returns N scored.

    Patch geometry comes from ``features_h5``'s attrs. For the hierarchical model ``features_h5`` is
    the 20x features file the hierarchy was built from, and the scored regions are its 5x parents
    (magnification / 4, the hierarchy's ``patch_size_level0_5x``).
    """
    checkpoint = load_checkpoint(model_pt, _features_identity(features_h5))
    coords, scores = _scores(checkpoint, model_pt, features_h5, hierarchy_h5, device)
    attrs = _h5_attrs(features_h5)
    if _is_hierarchical(checkpoint) and len(coords):
        hier = _h5_attrs(hierarchy_h5)
        if int(hier.get("patch_size_level0_20x", -1)) != int(attrs.get("patch_size_level0", -2)):
            raise HeatmapInputError(
                f"{hierarchy_h5} was not built from {features_h5} (20x patch side {hier.get('patch_size_level0_20x')} "
                f"vs {attrs.get('patch_size_level0')}); pass the 20x features file of the same slide and encoder"
            )
        attrs = {**attrs, "magnification": float(attrs["magnification"]) / CHILDREN_PER_SIDE,
                 "patch_size_level0": int(hier["patch_size_level0_5x"])}  # fmt: skip
    size0 = int(attrs.get("patch_size_level0", 0))
    render_heatmap(
        slide_path,
        coords,
        scores,
        size0,
        heatmap_png,
        thumbnail_max=thumbnail_max,
        title=title,
        map_shows=map_description(checkpoint),
    )
    render_top_patches(slide_path, coords, scores, attrs, top_png, k=k, fallback_mpp=fallback_mpp)
    return len(scores)


def map_description(checkpoint: Mapping[str, Any]) -> str:
    """What the model's instance scores are (the model class's ``map_shows``), for the figure."""
    model = _model_class(checkpoint)
    return f"{checkpoint['model']}: {model.map_shows}" if model is not None else str(checkpoint["model"])


def _h5_attrs(path: str | os.PathLike) -> dict[str, Any]:
    return read_attrs(path)


def percentile_scores(scores: np.ndarray) -> np.ndarray:
    """Scores -> percentile ranks in [0, 1] (ties share a rank), as CLAM draws heatmaps.

    Attention is a softmax over thousands of patches, so raw values are tiny and heavy-tailed; ranks
    spread the colour map evenly over the slide.
    """
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(scores) <= 1:
        return np.ones_like(scores)
    return (rankdata(scores, method="average") - 1.0) / (len(scores) - 1.0)


def rasterize(
    coords: np.ndarray, values: np.ndarray, patch_size_level0: int, shape: tuple[int, int], scale: tuple[float, float]
) -> np.ndarray:
    """Mean of ``values`` over the patches covering each pixel of a (H, W) grid; NaN where no patch lies.

    Patch [x, x + size) maps to columns [round(x * sx), round((x + size) * sx)) (at least one pixel),
    so a regular grid of patches tiles the raster without gaps or overlaps. Vectorised: each patch
    adds four corners to a difference array, and two cumulative sums give the sums and counts.
    """
    height, width = shape
    sx, sy = scale
    coords = np.asarray(coords, dtype=np.float64).reshape(-1, 2)
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    x0 = np.clip(np.round(coords[:, 0] * sx), 0, width).astype(np.int64)
    y0 = np.clip(np.round(coords[:, 1] * sy), 0, height).astype(np.int64)
    x1 = np.clip(np.maximum(np.round((coords[:, 0] + patch_size_level0) * sx), x0 + 1), 0, width).astype(np.int64)
    y1 = np.clip(np.maximum(np.round((coords[:, 1] + patch_size_level0) * sy), y0 + 1), 0, height).astype(np.int64)
    inside = (x1 > x0) & (y1 > y0)
    x0, y0, x1, y1, values = x0[inside], y0[inside], x1[inside], y1[inside], values[inside]
    sums = np.zeros((height + 1, width + 1))
    counts = np.zeros((height + 1, width + 1))
    for acc, weight in ((sums, values), (counts, np.ones_like(values))):
        np.add.at(acc, (y0, x0), weight)
        np.add.at(acc, (y0, x1), -weight)
        np.add.at(acc, (y1, x0), -weight)
        np.add.at(acc, (y1, x1), weight)
    sums = sums.cumsum(0).cumsum(1)[:height, :width]
    counts = np.rint(counts.cumsum(0).cumsum(1)[:height, :width])
    return np.divide(sums, counts, out=np.full((height, width), np.nan), where=counts > 0)


def overlay(thumbnail: np.ndarray, raster: np.ndarray, cmap: str = "jet", alpha: float = 0.5) -> np.ndarray:
    """Blend the colour-mapped ``raster`` (values in [0, 1], NaN = no patch) onto an RGB thumbnail."""
    colours = colormaps[cmap](np.nan_to_num(raster, nan=0.0))[..., :3] * 255.0
    covered = ~np.isnan(raster)
    out = thumbnail.astype(np.float64)
    out[covered] = (1.0 - alpha) * out[covered] + alpha * colours[covered]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def render_heatmap(
    slide_path: str | os.PathLike,
    coords: np.ndarray,
    scores: np.ndarray,
    patch_size_level0: int,
    out_png: str | os.PathLike,
    *,
    thumbnail_max: int = 2048,
    cmap: str = "jet",
    alpha: float = 0.5,
    title: str | None = None,
    map_shows: str | None = None,
) -> np.ndarray:
    """Draw percentile-normalised ``scores`` over the slide thumbnail with a colour bar; write ``out_png``.

    The thumbnail (longest side at most ``thumbnail_max``) is drawn 1:1 at PNG offset (row TITLE_PX,
    column 0); the title is ``title`` or the slide file's stem, and ``map_shows`` (what the scores
    are, e.g. "class-token attention row") is a second line under it. Returns the blended RGB thumbnail.
    """
    slide = open_slide(slide_path)
    try:
        width0, height0 = slide.dimensions
        thumbnail = np.asarray(slide.get_thumbnail((thumbnail_max, thumbnail_max)).convert("RGB"))
    finally:
        slide.close()
    height, width = thumbnail.shape[:2]
    scale = (width / width0, height / height0)
    raster = rasterize(coords, percentile_scores(scores), patch_size_level0, (height, width), scale)
    image = overlay(thumbnail, raster, cmap, alpha)

    name = title or Path(slide_path).stem
    fig = Figure(figsize=((width + COLORBAR_PX) / DPI, (height + TITLE_PX) / DPI), dpi=DPI)
    fig.figimage(image, xo=0, yo=0, origin="upper")
    title_y = 0.3 if map_shows else 0.5  # fraction of the title band from its top
    fig.text(0.5 * width / (width + COLORBAR_PX), 1 - title_y * TITLE_PX / (height + TITLE_PX),
             f"{name}  ({len(scores)} patches)" if len(scores) else f"{name}  (no patches)",
             ha="center", va="center", fontsize=11)  # fmt: skip
    if map_shows:
        fig.text(0.5 * width / (width + COLORBAR_PX), 1 - 0.78 * TITLE_PX / (height + TITLE_PX),
                 f"map: {map_shows}", ha="center", va="center", fontsize=7)  # fmt: skip
    total_w, total_h = width + COLORBAR_PX, height + TITLE_PX
    cax = fig.add_axes((width / total_w + 15 / total_w, 0.1 * height / total_h, 18 / total_w, 0.8 * height / total_h))
    bar = fig.colorbar(ScalarMappable(norm=Normalize(0, 100), cmap=cmap), cax=cax)
    bar.set_label("attention percentile")
    _save(fig, out_png)
    log.info("%s: heatmap of %d patches written to %s", name, len(scores), out_png)
    return image


def plan_for_features(
    slide_path: str | os.PathLike,
    source: ReadPlan | str | os.PathLike | Mapping[str, Any],
    fallback_mpp: float | None = None,
) -> ReadPlan:
    """The read plan of the features' patches: given, or built from ``magnification`` / ``patch_size`` attrs.

    ``source`` is a ReadPlan, a features/coords h5 (its root attrs), or a mapping of those attrs.
    """
    if isinstance(source, ReadPlan):
        return source
    if isinstance(source, Mapping):
        attrs, where = dict(source), "the patch attributes"
    else:
        attrs, where = _h5_attrs(source), os.fspath(source)
    return plan_from_attrs(slide_path, attrs, where, fallback_mpp, error=HeatmapInputError)


def top_indices(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` highest scores, best first (ties: the earlier instance first)."""
    return np.argsort(-np.asarray(scores, dtype=np.float64).reshape(-1), kind="stable")[:k]


def render_top_patches(
    slide_path: str | os.PathLike,
    coords: np.ndarray,
    scores: np.ndarray,
    read_plan_or_patch_info: ReadPlan | str | os.PathLike | Mapping[str, Any],
    out_png: str | os.PathLike,
    k: int = 8,
    fallback_mpp: float | None = None,
) -> np.ndarray:
    """Write the top-``k`` scoring patches as a strip read at the features' magnification; return their indices.

    Patch i of the strip is drawn 1:1 at PNG offset (row CAPTION_PX, column i * (patch_size +
    STRIP_GAP_PX)) under a caption with its rank, score and level-0 coords. Only these k patches are read.
    """
    coords = np.asarray(coords, dtype=np.int64).reshape(-1, 2)
    chosen = top_indices(scores, k)
    if not len(chosen):  # no tissue: nothing to read, and the slide may have no usable resolution
        fig = Figure(figsize=(3, 1), dpi=DPI)
        fig.text(0.5, 0.5, f"{Path(slide_path).stem}: no patches", ha="center", va="center")
        _save(fig, out_png)
        return chosen
    plan = plan_for_features(slide_path, read_plan_or_patch_info, fallback_mpp)
    size = plan.patch_size
    strip = np.full((size, len(chosen) * (size + STRIP_GAP_PX) - STRIP_GAP_PX, 3), 255, np.uint8)
    slide = open_slide(slide_path)
    try:
        for i, idx in enumerate(chosen):
            x = i * (size + STRIP_GAP_PX)
            strip[:, x : x + size] = read_patch(slide, int(coords[idx, 0]), int(coords[idx, 1]), plan)
    finally:
        slide.close()
    total_w, total_h = strip.shape[1], size + CAPTION_PX
    fig = Figure(figsize=(total_w / DPI, total_h / DPI), dpi=DPI)
    fig.figimage(strip, xo=0, yo=0, origin="upper")
    for i, idx in enumerate(chosen):
        fig.text((i * (size + STRIP_GAP_PX) + size / 2) / total_w, 1 - 0.5 * CAPTION_PX / total_h,
                 f"#{i + 1} {float(scores[idx]):.3g}\n({coords[idx, 0]}, {coords[idx, 1]})",
                 ha="center", va="center", fontsize=7)  # fmt: skip
    _save(fig, out_png)
    return chosen


def _save(fig: Figure, out_png: str | os.PathLike) -> None:
    """Write the figure as PNG at zlib level 1: the full-size maps are 2,000 px a side, and the default
    level 6 spent ~40% of a heatmap job encoding them for ~10% fewer bytes (the report holds JPEGs)."""
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI, pil_kwargs={"compress_level": PNG_COMPRESS_LEVEL})


def test_split_heatmaps(
    model_pt: str | os.PathLike,
    folds_csv: str | os.PathLike,
    fold: int,
    slides: dict[str, str],
    features: dict[str, str],
    out_dir: str | os.PathLike,
    *,
    hierarchy: dict[str, str] | None = None,
    k: int = 8,
    device: str = "auto",
    fallback_mpp: float | None = None,
) -> list[str]:
    """Heatmaps of the slides in ``fold``'s test split, scored by the model that never saw them.

    Writes ``{slide_id}.heatmap.png`` and ``{slide_id}.top{k}.png`` per slide into ``out_dir`` and
    returns the slide ids; slides without patches get the "no patches" figures.
    """
    folds = pd.read_csv(folds_csv, dtype={"slide_id": str, "case_id": str})
    test_ids = folds.loc[(folds["fold"] == fold) & (folds["split"] == "test"), "slide_id"].tolist()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    done = []
    for slide_id in test_ids:
        if slide_id not in features or slide_id not in slides:
            log.warning("slide %s is in the test split but has no features or slide file: no heatmap", slide_id)
            continue
        slide_heatmaps(
            model_pt,
            slides[slide_id],
            features[slide_id],
            out / f"{slide_id}.heatmap.png",
            out / f"{slide_id}.top{k}.png",
            hierarchy_h5=(hierarchy or {}).get(slide_id),
            k=k,
            device=device,
            fallback_mpp=fallback_mpp,
            title=slide_id,
        )
        done.append(slide_id)
    return done
