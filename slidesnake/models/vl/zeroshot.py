"""Zero-shot slide classification from stored features (CONCH / MI-Zero protocol, DESIGN §3).

Class weight = L2-normalise(mean of the L2-normalised text embeddings over synonyms × templates);
tile logit = cosine(tile, class weight); slide score per class = mean of the top-K tile logits, for
every K in ``TOP_K`` at once (one partition, one sort of the top rows, one cumulative sum); slide
probabilities = softmax(exp(logit_scale) × score). MI-Zero's prompt-set sampling (one synonym per
class + a random subset of templates, fixed seeds) runs in the same matrix product: the weights of
every set are stacked, so 50 sets cost one matmul of the slide's features. A cohort is scored in
blocks of consecutive slides (one matmul per block of ``CHUNK_TILES`` rows, read by a prefetching
thread while the previous block is multiplied), so scoring from stored features costs about the reads
plus the arithmetic. Optional k-NN smoothing averages each tile's logits with its k nearest tiles by
coordinates.

K is never chosen on test slides: the predictions use the configured K, or (``top_k="val"``) the K
with the best balanced accuracy on each fold's validation slides, applied to that fold's test slides.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import h5py
import numpy as np
import pandas as pd

from slidesnake.naming import IMAGE_ONLY_ENCODERS

log = logging.getLogger(__name__)

TOP_K: tuple[int, ...] = (1, 5, 10, 50, 100)
FULL_SET = -1  # prompt_set id of the full synonyms × templates ensemble
CHUNK_TILES = 16_384  # rows of one block of consecutive slides' features, scored by one matmul


class ZeroShotError(ValueError):
    """Inputs zero-shot cannot score (image-only encoder, unprojected or mismatched features, classes)."""


def check_text_tower(encoder: str) -> None:
    """Fail early for an encoder without a text tower (config key ``zeroshot.encoders``)."""
    if encoder.strip().lower() in IMAGE_ONLY_ENCODERS:
        raise ZeroShotError(
            f"encoder '{encoder}' is image-only (no text tower), so it cannot score zero-shot prompts; remove it "
            "from 'zeroshot.encoders' (supervised models in 'training.models' can still use its features)"
        )


@dataclass(frozen=True)
class TextBank:
    """Prompt embeddings of one (encoder, prompts) text h5 (slidesnake/features/text.py)."""

    embeddings: np.ndarray  # (T, D) L2-normalised
    class_index: np.ndarray  # (T,)
    synonym_index: np.ndarray  # (T,)
    template_index: np.ndarray  # (T,)
    classes: list[str]
    logit_scale: float
    encoder: str
    path: str = ""


def read_text_bank(path: str | os.PathLike) -> TextBank:
    with h5py.File(path, "r") as f:
        emb = f["embeddings"][()].astype(np.float32)
        index = f["class_index"][()].astype(np.int64)
        synonyms = f["synonym_index"][()] if "synonym_index" in f else np.arange(len(index))
        templates = f["template_index"][()] if "template_index" in f else np.zeros(len(index), np.int64)
        classes = json.loads(f.attrs["classes"])
        return TextBank(
            emb,
            index,
            np.asarray(synonyms, np.int64),
            np.asarray(templates, np.int64),
            list(classes),
            float(f.attrs.get("logit_scale", 1.0)),
            str(f.attrs.get("encoder", "")),
            os.fspath(path),
        )


def reorder(bank: TextBank, classes: Sequence[str]) -> TextBank:
    """The bank with its class index in ``classes`` order (the task's target order)."""
    if sorted(bank.classes) != sorted(classes):
        raise ZeroShotError(f"{bank.path}: prompt classes {bank.classes} are not the task's classes {list(classes)}")
    mapping = np.array([list(classes).index(c) for c in bank.classes])
    return TextBank(
        bank.embeddings,
        mapping[bank.class_index],
        bank.synonym_index,
        bank.template_index,
        list(classes),
        bank.logit_scale,
        bank.encoder,
        bank.path,
    )


def class_weights(bank: TextBank, select: np.ndarray | None = None) -> np.ndarray:
    """(C, D) renormalised mean of the (selected) prompt embeddings of each class."""
    keep = np.ones(len(bank.class_index), bool) if select is None else select
    weights = []
    for k, name in enumerate(bank.classes):
        rows = bank.embeddings[keep & (bank.class_index == k)]
        if not len(rows):
            raise ZeroShotError(f"{bank.path}: class '{name}' has no prompts in this prompt set")
        rows = rows / np.linalg.norm(rows, axis=1, keepdims=True)
        mean = rows.mean(axis=0)
        weights.append(mean / np.linalg.norm(mean))
    return np.stack(weights).astype(np.float32)


def prompt_sets(bank: TextBank, n_sets: int = 50, seed: int = 0) -> list[np.ndarray]:
    """MI-Zero prompt sets as row masks: per set, one random synonym per class and a random subset of
    U{1..T} templates (T = the fewest templates of any class), shared by all classes; seeded per set."""
    n_templates = min(int(bank.template_index[bank.class_index == k].max()) + 1 for k in range(len(bank.classes)))
    sets = []
    for s in range(n_sets):
        rng = np.random.default_rng([seed, s])
        size = int(rng.integers(1, n_templates + 1))
        templates = rng.choice(n_templates, size=size, replace=False)
        mask = np.zeros(len(bank.class_index), bool)
        for k in range(len(bank.classes)):
            rows = bank.class_index == k
            synonyms = np.unique(bank.synonym_index[rows])
            synonym = synonyms[int(rng.integers(len(synonyms)))]
            mask |= rows & (bank.synonym_index == synonym) & np.isin(bank.template_index, templates)
        sets.append(mask)
    return sets


def stacked_weights(bank: TextBank, n_sets: int, seed: int) -> np.ndarray:
    """(1 + n_sets, C, D): the full ensemble first, then each sampled prompt set."""
    return np.stack([class_weights(bank)] + [class_weights(bank, m) for m in prompt_sets(bank, n_sets, seed)])


def _checked_features(f: h5py.File, path: str | os.PathLike, dim: int | None) -> h5py.Dataset:
    """The ``features`` dataset of an open features h5, after the projection and dimension checks."""
    if not bool(f.attrs.get("projected", True)):
        raise ZeroShotError(
            f"{path}: features of encoder '{f.attrs.get('encoder', '?')}' are stored before the projection into "
            "the joint image-text space (attrs projected=False); zero-shot needs projected features: rerun its "
            "features job with an encoder entry that projects (DESIGN §3)"
        )
    features = f["features"]
    if dim is not None and features.shape[0] and features.shape[1] != dim:
        raise ZeroShotError(
            f"{path}: features have D={features.shape[1]} but the text embeddings have D={dim}; features and prompts "
            "must come from the same encoder"
        )
    return features


def _normalise_rows(features: np.ndarray) -> np.ndarray:
    """L2-normalise the rows of ``features`` in place (zero rows stay zero)."""
    features /= np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    return features


def read_slide_features(path: str | os.PathLike, dim: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """L2-normalised (N, D) features and (N, 2) coords; errors for unprojected or mismatched features."""
    with h5py.File(path, "r") as f:
        features = _checked_features(f, path, dim)[()].astype(np.float32, copy=False)
        coords = f["coords"][()].reshape(-1, 2)
    return _normalise_rows(features), coords


@dataclass
class FeatureChunk:
    """L2-normalised features of consecutive slides in one (n, D) block: slide i is rows
    ``offsets[i]:offsets[i + 1]``; ``coords[i]`` its (N_i, 2) coordinates."""

    features: np.ndarray
    slide_ids: list[str]
    offsets: list[int]
    coords: list[np.ndarray]


def read_feature_chunks(
    features: Mapping[str, str | os.PathLike], dim: int, chunk_tiles: int = 16_384, n_buffers: int = 2
) -> Iterator[FeatureChunk]:
    """Every slide's features, read straight into ``n_buffers`` reused (chunk_tiles, D) blocks in turn, so
    10,000 slides cost no allocation per slide and one matmul per block. A chunk's block is overwritten
    ``n_buffers - 1`` chunks later (a prefetching reader may fill the next one meanwhile). Slides
    without patches are skipped with a warning; a slide larger than a block comes in a block of its own."""
    buffers = [np.empty((chunk_tiles, dim), np.float32) for _ in range(n_buffers)]
    turn = 0
    chunk = FeatureChunk(buffers[0], [], [0], [])
    for slide_id, path in features.items():
        with h5py.File(path, "r") as f:
            data = _checked_features(f, path, dim)
            n = int(data.shape[0])
            if not n:
                log.warning("%s: no patches; slide %s not scored", path, slide_id)
                continue
            if chunk.offsets[-1] + n > chunk_tiles and chunk.slide_ids:
                chunk.features = chunk.features[: chunk.offsets[-1]]
                yield chunk
                turn = (turn + 1) % n_buffers
                chunk = FeatureChunk(buffers[turn], [], [0], [])
            if n > chunk_tiles:  # one slide larger than a block: its own array
                chunk.features = np.empty((n, dim), np.float32)
            start = chunk.offsets[-1]
            block = chunk.features[start : start + n]
            data.read_direct(block)
            chunk.coords.append(f["coords"][()].reshape(-1, 2))
        _normalise_rows(block)
        chunk.slide_ids.append(slide_id)
        chunk.offsets.append(start + n)
    if chunk.slide_ids:
        chunk.features = chunk.features[: chunk.offsets[-1]]
        yield chunk


def smooth_logits(logits: np.ndarray, coords: np.ndarray, k: int = 8) -> np.ndarray:
    """Each tile's logits averaged with those of its ``k`` nearest tiles (by coordinates)."""
    if k <= 0 or len(logits) < 2:
        return logits
    from scipy.spatial import cKDTree

    _, neighbours = cKDTree(coords).query(coords, k=min(k + 1, len(coords)))
    return logits[neighbours].mean(axis=1)


def topk_means(logits: np.ndarray, ks: Sequence[int]) -> np.ndarray:
    """(len(ks), ...) mean of the top-K values along axis 0 for each K (K capped at N)."""
    n = len(logits)
    k_max = min(max(ks), n)
    top = np.partition(logits, n - k_max, axis=0)[n - k_max :] if k_max < n else logits
    top = -np.sort(-top, axis=0)
    csum = np.cumsum(top, axis=0)
    return np.stack([csum[min(k, n) - 1] / min(k, n) for k in ks])


def flat_weights(weights: np.ndarray) -> np.ndarray:
    """(D, n_sets * C) contiguous right-hand side of the tile-logit matmul, built once per cohort."""
    n_sets, n_classes, dim = weights.shape
    return np.ascontiguousarray(weights.reshape(n_sets * n_classes, dim).T)


def pool_logits(
    logits: np.ndarray, coords: np.ndarray, n_classes: int, ks: Sequence[int], smoothing_k: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Pooled scores (len(ks), n_sets, C) and the full set's tile logits (N, C) of one slide's (N, n_sets * C)
    tile logits (every prompt set's columns side by side, the full set first)."""
    if smoothing_k:
        logits = smooth_logits(logits, coords, smoothing_k)
    pooled = topk_means(logits, ks).reshape(len(ks), -1, n_classes)
    return pooled, logits[:, :n_classes]


def score_slide(
    features: np.ndarray, coords: np.ndarray, weights: np.ndarray, ks: Sequence[int], smoothing_k: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Pooled scores (len(ks), n_sets, C) and the full set's tile logits (N, C) of one slide."""
    logits = features @ flat_weights(weights)  # one matmul for every prompt set
    return pool_logits(logits, coords, weights.shape[1], ks, smoothing_k)


def softmax(scores: np.ndarray, scale: float) -> np.ndarray:
    z = scores * scale
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


@dataclass(frozen=True)
class ZeroShotParams:
    top_k: int | str = 50  # a K, or "val": per fold, the K with the best validation balanced accuracy
    ks: tuple[int, ...] = TOP_K
    n_prompt_sets: int = 50
    seed: int = 0
    smoothing_k: int = 0


def score_cohort(
    features: Mapping[str, str],
    bank: TextBank,
    params: ZeroShotParams,
    tile_scores_h5: str | os.PathLike | None = None,
) -> pd.DataFrame:
    """Long table of every slide's class probabilities: slide_id, prompt_set (-1 = full ensemble), k,
    prob_<class>; optionally the full set's per-tile logits into ``tile_scores_h5`` (one group per slide)."""
    ks = tuple(sorted(set(params.ks) | ({params.top_k} if isinstance(params.top_k, int) else set())))
    weights = stacked_weights(bank, params.n_prompt_sets, params.seed)
    rhs = flat_weights(weights)
    n_classes = len(bank.classes)
    scale = bank.logit_scale  # stored already exponentiated (Encoder.logit_scale)
    scored, probs, tiles = [], [], {}
    # A reader thread fills the next block while this one multiplies (NumPy and BLAS release the GIL),
    # so the matmul hides behind the reads; one matmul per block, not per slide: per-slide products
    # are too small for BLAS, whose threads then cost more than they save.
    with ThreadPoolExecutor(max_workers=1) as reader:
        chunks = read_feature_chunks(features, bank.embeddings.shape[1], CHUNK_TILES)
        pending = reader.submit(next, chunks, None)
        while (chunk := pending.result()) is not None:
            pending = reader.submit(next, chunks, None)
            logits = chunk.features @ rhs
            for i, slide_id in enumerate(chunk.slide_ids):
                part = logits[chunk.offsets[i] : chunk.offsets[i + 1]]
                pooled, tile_logits = pool_logits(part, chunk.coords[i], n_classes, ks, params.smoothing_k)
                scored.append(slide_id)
                probs.append(pooled)
                if tile_scores_h5 is not None:
                    tiles[slide_id] = (chunk.coords[i], tile_logits.copy())  # not a view of every set's logits
    if not scored:
        raise ZeroShotError(f"no slide has patches among {len(features)} feature files; nothing to score")
    if tile_scores_h5 is not None:
        write_tile_scores(tile_scores_h5, tiles, bank.classes, scale)
    stacked = softmax(np.stack(probs), scale)  # (slides, K, sets, C)
    n_slides, n_k, n_sets, n_classes = stacked.shape
    table = pd.DataFrame(
        {
            "slide_id": np.repeat(np.asarray(scored, dtype=object), n_k * n_sets),
            "prompt_set": np.tile(np.arange(n_sets) - 1, n_slides * n_k),  # 0 -> FULL_SET (-1), then 0..n-1
            "k": np.tile(np.repeat(np.asarray(ks), n_sets), n_slides),
        }
    )
    flat = stacked.reshape(-1, n_classes)
    for c, name in enumerate(bank.classes):
        table[f"prob_{name}"] = flat[:, c]
    return table


def write_tile_scores(
    path: str | os.PathLike, tiles: Mapping[str, tuple[np.ndarray, np.ndarray]], classes: list[str], scale: float
) -> None:
    """Per slide: ``{slide_id}/coords`` (N,2) and ``{slide_id}/logits`` (N,C) cosines; attrs classes, scale."""
    from slidesnake.io.atomic import atomic_path

    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs["classes"] = json.dumps(classes)
        f.attrs["logit_scale"] = scale
        for slide_id, (coords, logits) in tiles.items():
            group = f.create_group(slide_id)
            group.create_dataset("coords", data=coords.astype(np.int64))
            group.create_dataset("logits", data=logits.astype(np.float32))


def slide_test_fold(folds: pd.DataFrame) -> pd.DataFrame:
    """slide_id -> the fold whose test split holds it (each slide is a test slide in exactly one fold)."""
    test = folds.loc[folds["split"] == "test", ["slide_id", "fold"]]
    duplicated = test["slide_id"].duplicated()
    if duplicated.any():
        raise ZeroShotError(f"slide {test['slide_id'][duplicated].iloc[0]} is a test slide of more than one fold")
    return test.reset_index(drop=True)


def choose_k(scores: pd.DataFrame, labels: pd.DataFrame, folds: pd.DataFrame, classes: list[str]) -> dict[int, int]:
    """Per fold, the K with the best balanced accuracy on that fold's validation slides (full prompt set)."""
    from sklearn.metrics import balanced_accuracy_score

    full = scores[scores["prompt_set"] == FULL_SET].merge(labels[["slide_id", "target"]], on="slide_id")
    chosen = {}
    for fold, part in folds.groupby("fold"):
        val = full[full["slide_id"].isin(part.loc[part["split"] == "val", "slide_id"])]
        best_k, best = int(sorted(full["k"].unique())[-1]), -1.0
        for k, rows in val.groupby("k"):
            pred = rows[[f"prob_{c}" for c in classes]].to_numpy().argmax(1)
            score = balanced_accuracy_score(rows["target"], pred) if len(rows) else -1.0
            if score > best:
                best_k, best = int(k), score
        chosen[int(fold)] = best_k
    return chosen


def predictions_table(
    scores: pd.DataFrame,
    labels: pd.DataFrame,
    folds: pd.DataFrame,
    classes: list[str],
    top_k: int | str,
    only_fold: int | None = None,
) -> pd.DataFrame:
    """The trained-model predictions contract: one row per scored slide, split "test", fold = its test
    fold, the task's target columns and prob_<class> of the full prompt set at the chosen K.

    ``only_fold`` keeps that fold's test slides only: an encoder aligned on one fold's train patients
    (CPLIP) has seen every other slide's patients, or chose its epoch on them."""
    table = labels.merge(slide_test_fold(folds), on="slide_id", how="inner")
    if only_fold is not None:
        table = table[table["fold"] == only_fold]
        if table.empty:
            raise ZeroShotError(
                f"fold {only_fold} has no test slide with a label (folds: {sorted(folds['fold'].unique())})"
            )
    full = scores[scores["prompt_set"] == FULL_SET]
    if top_k == "val":
        chosen = choose_k(scores, labels, folds, classes)
        table["k"] = table["fold"].map(chosen)
    else:
        table["k"] = int(top_k)
    out = table.merge(full.drop(columns=["prompt_set"]), on=["slide_id", "k"], how="inner")
    out.insert(3, "split", "test")
    first = ["slide_id", "case_id", "fold", "split"]
    return out[first + [c for c in out.columns if c not in first]].reset_index(drop=True)
