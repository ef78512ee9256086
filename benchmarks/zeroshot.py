"""Zero-shot scoring from stored features is I/O-bound: our scorer vs plain NumPy on the same arrays.

1. In memory: :func:`slidesnake.models.vl.zeroshot.score_slide` (every K of the sweep and 1 + 50 prompt
   sets in one matmul) vs a plain NumPy reference (one matmul per prompt set + one ``np.partition`` per
   K) on the same features and weights. Prints tiles/s of each and the ratio ours / reference.
2. A 10,000-slide bag index: the time to score a cohort end to end from feature h5 files
   (:func:`score_cohort`), reported in seconds and tiles/s, with the raw h5 read time alone as reference.

Usage: python benchmarks/zeroshot.py [--slides 10000] [--tiles 200] [--dim 512]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

from slidesnake.models.vl.zeroshot import TOP_K, TextBank, ZeroShotParams, score_cohort, score_slide, stacked_weights


def _bank(dim: int, n_classes: int = 3, n_syn: int = 4, n_tpl: int = 16) -> TextBank:
    rng = np.random.default_rng(0)
    rows = [(c, s, t) for c in range(n_classes) for s in range(n_syn) for t in range(n_tpl)]
    emb = rng.normal(size=(len(rows), dim)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    return TextBank(
        emb,
        np.array([r[0] for r in rows]),
        np.array([r[1] for r in rows]),
        np.array([r[2] for r in rows]),
        [f"c{k}" for k in range(n_classes)],
        50.0,
        "bench",
    )


def reference(features: np.ndarray, weights: np.ndarray, ks) -> np.ndarray:
    """Plain NumPy: per prompt set one matmul, per K one partition and a mean."""
    n = len(features)
    out = np.empty((len(ks), weights.shape[0], weights.shape[1]), np.float32)
    for s in range(weights.shape[0]):
        logits = features @ weights[s].T
        for i, k in enumerate(ks):
            k = min(k, n)
            out[i, s] = np.partition(logits, n - k, axis=0)[n - k :].mean(axis=0)
    return out


def in_memory(n_tiles: int, dim: int, repeats: int) -> None:
    bank = _bank(dim)
    weights = stacked_weights(bank, 50, 0)
    rng = np.random.default_rng(1)
    features = rng.normal(size=(n_tiles, dim)).astype(np.float32)
    features /= np.linalg.norm(features, axis=1, keepdims=True)
    coords = np.zeros((n_tiles, 2), np.int64)
    ours, _ = score_slide(features, coords, weights, TOP_K)
    ref = reference(features, weights, TOP_K)
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-5)
    best = {}
    for name, fn in (
        ("ours", lambda: score_slide(features, coords, weights, TOP_K)),
        ("numpy", lambda: reference(features, weights, TOP_K)),
    ):
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        best[name] = min(times)
    rate = {k: n_tiles / v for k, v in best.items()}
    print(
        f"in memory, {n_tiles} tiles x D={dim}, 51 prompt sets x {len(TOP_K)} K: ours {rate['ours']:,.0f} tiles/s, "
        f"numpy matmul+partition {rate['numpy']:,.0f} tiles/s, ratio ours/numpy {rate['ours'] / rate['numpy']:.2f}"
    )


def cohort(n_slides: int, n_tiles: int, dim: int) -> None:
    bank = _bank(dim)
    rng = np.random.default_rng(2)
    with tempfile.TemporaryDirectory() as tmp:
        paths = {}
        for i in range(n_slides):
            path = Path(tmp) / f"S{i:05d}.h5"
            with h5py.File(path, "w") as f:
                f["features"] = rng.normal(size=(n_tiles, dim)).astype(np.float32)
                f["coords"] = rng.integers(0, 100_000, (n_tiles, 2))
                f.attrs["projected"] = True
            paths[f"S{i:05d}"] = str(path)
        start = time.perf_counter()
        for path in paths.values():
            with h5py.File(path, "r") as f:
                f["features"][()]
                f["coords"][()]
        read = time.perf_counter() - start
        weights = stacked_weights(bank, 50, 0)
        start = time.perf_counter()
        for path in paths.values():
            with h5py.File(path, "r") as f:
                features = f["features"][()]
                f["coords"][()]
            reference(features / np.linalg.norm(features, axis=1, keepdims=True), weights, TOP_K)
        plain = time.perf_counter() - start
        start = time.perf_counter()
        scores = score_cohort(paths, bank, ZeroShotParams(n_prompt_sets=50))
        total = time.perf_counter() - start
    tiles = n_slides * n_tiles
    print(
        f"bag index of {n_slides} slides x {n_tiles} tiles (D={dim}): score_cohort {total:.1f} s "
        f"({tiles / total:,.0f} tiles/s, {len(scores):,} score rows); read + numpy reference {plain:.1f} s "
        f"({tiles / plain:,.0f} tiles/s, ratio ours/reference {plain / total:.2f}); h5 reads alone {read:.1f} s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slides", type=int, default=10_000)
    parser.add_argument("--tiles", type=int, default=200, help="tiles per slide in the bag-index run")
    parser.add_argument("--memory-tiles", type=int, default=20_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    in_memory(args.memory_tiles, args.dim, args.repeats)
    cohort(args.slides, args.tiles, args.dim)


if __name__ == "__main__":
    main()
