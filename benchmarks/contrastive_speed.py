"""HLIP tuning must be bound by the model, not by the tile loader; retrieval must stay in bounded memory.

1. Tuning throughput: the HLIP training step (:func:`slidesnake.train.contrastive.hlip_step_loss`,
   forward + backward + Adam step) of a random-weight demo-clip (open_clip CLIP from ``DEMO_CLIP_CFG``,
   saved as an open_clip folder and read back with ``load_encoder``, as the pipeline does) fed end to end
   from tiles h5 files (:class:`TilePairs` with augmentation, :func:`pair_loader`, shuffled batches) vs
   the same step on one batch already in memory. Prints pairs/s of each and end-to-end / in-memory
   (target >= 0.8). Rounds are interleaved and the fastest of each counts.
2. Retrieval: 100,000 tile embeddings x 1,000 caption embeddings, top-k both ways, with
   :func:`slidesnake.evaluate.retrieval.chunked_topk` vs one unchunked NumPy matmul + ``argpartition``.
   Each runs in its own process; prints seconds, the peak-RSS growth while it ran (polled), the share
   of rows with identical top-k sets and the largest gap between the two top-k score lists (rows that
   differ swap near-equal scores: torch and NumPy sum in different orders). Targets: chunked peak
   <= 1.5 x its score-buffer bound (query_chunk x (gallery_chunk + k) float32, whatever Q and G),
   score gap <= 1e-5.

Exits 1 when a target is missed.
Usage: python benchmarks/contrastive_speed.py [--slides 40] [--tiles 64] [--batch 64] [--rounds 3]
       [--threads 2] [--num-workers 0] [--gallery 100000] [--queries 1000] [--dim 512] [--k 10]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import torch

from slidesnake.evaluate.retrieval import chunked_topk
from slidesnake.features.encoders import load_encoder
from slidesnake.train.contrastive import (
    DEMO_CLIP_CFG,
    ClipTowers,
    TilePairs,
    hlip_step_loss,
    pair_items,
    pair_loader,
    save_open_clip_folder,
)

PATCH = 256  # the tiles files hold patches at the pipeline's patch size; the loader resizes them


def write_tiles(folder: Path, n_slides: int, n_tiles: int) -> dict[str, str]:
    """Tiles h5 files as slidesnake/features/tiles.py writes them (one chunk per tile)."""
    rng = np.random.default_rng(0)
    files = {}
    for s in range(n_slides):
        path = folder / f"S{s:04d}.h5"
        tiles = rng.integers(0, 256, (n_tiles, PATCH, PATCH, 3), dtype=np.uint8)
        with h5py.File(path, "w") as f:
            f.create_dataset("tiles", data=tiles, chunks=(1, PATCH, PATCH, 3))
            f.create_dataset("coords", data=np.zeros((n_tiles, 2), np.int64))
            f.attrs["status"] = "ok"
        files[f"S{s:04d}"] = str(path)
    return files


def demo_clip(folder: Path) -> object:
    import open_clip

    torch.manual_seed(0)
    model = open_clip.CLIP(**DEMO_CLIP_CFG)
    save_open_clip_folder(model, DEMO_CLIP_CFG, str(folder), {"objective": "benchmark (random weights)"})
    return load_encoder(str(folder), torch.device("cpu"))


def tuning(args: argparse.Namespace, root: Path) -> float:
    tiles = write_tiles(root, args.slides, args.tiles)
    encoder = demo_clip(root / "demo-clip")
    towers = ClipTowers(encoder)
    cases = {s: f"C{s}" for s in tiles}
    captions = [f"The tumour is stage {'I' * (1 + i % 3)}. The patient is case {i}." for i in range(len(tiles))]
    case_index = {f"C{s}": i for i, s in enumerate(sorted(tiles))}
    tokens = towers.tokenize(captions)
    items = pair_items(tiles, cases, case_index)
    dataset = TilePairs(items, encoder.spec.image_size, augment=True, seed=0)
    loader = pair_loader(dataset, args.batch, shuffle=True, seed=0, num_workers=args.num_workers)
    optimizer = torch.optim.AdamW([p for p in encoder.model.parameters() if p.requires_grad], lr=1e-4)
    device = torch.device("cpu")
    encoder.model.train()

    def step(batch) -> None:
        loss = hlip_step_loss(towers, tokens, batch, device)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    resident = next(iter(loader))
    step(resident)  # warm-up: allocator, optimiser state
    n_steps = len(loader)
    best_e2e = best_mem = 0.0
    for _ in range(args.rounds):
        t = time.perf_counter()
        pairs = 0
        for batch in loader:
            step(batch)
            pairs += len(batch[1])
        best_e2e = max(best_e2e, pairs / (time.perf_counter() - t))
        t = time.perf_counter()
        for _ in range(n_steps):
            step(resident)
        best_mem = max(best_mem, n_steps * len(resident[1]) / (time.perf_counter() - t))
    ratio = best_e2e / best_mem
    print(
        f"tuning    {len(items)} pairs ({args.slides} tiles files x {args.tiles}, {PATCH} px -> "
        f"{encoder.spec.image_size} px), batch {args.batch}, {args.num_workers} loader workers, "
        f"{torch.get_num_threads()} threads"
    )
    print(f"  end to end from tiles files   {best_e2e:9.1f} pairs/s")
    print(f"  same step, batch in memory    {best_mem:9.1f} pairs/s")
    print(f"  end to end / in memory        {ratio:9.2f}  (target >= 0.8)")
    return ratio


def _embeddings(n: int, dim: int, seed: int) -> np.ndarray:
    """Unit rows, made in float32 and normalised in place (no float64 temporaries to lift the RSS baseline)."""
    x = np.random.default_rng(seed).standard_normal((n, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def _unchunked(queries: np.ndarray, gallery: np.ndarray, k: int) -> np.ndarray:
    sims = queries @ gallery.T
    part = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(sims, part, 1), axis=1)
    return np.take_along_axis(part, order, 1)


class PeakRSS:
    """Peak resident memory above the starting level while the block runs (a thread polls /proc)."""

    def __enter__(self) -> PeakRSS:
        import threading

        self._page = resource.getpagesize()
        self.start = self.peak = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self._page

    def _poll(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, self._rss())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())

    @property
    def mb(self) -> float:
        return (self.peak - self.start) / 2**20


def _retrieval_child(method: str, args: dict, out: mp.Queue) -> None:
    torch.set_num_threads(args["threads"])
    tiles = _embeddings(args["gallery"], args["dim"], 1)
    texts = _embeddings(args["queries"], args["dim"], 2)
    pairs = {"image->text": (tiles, texts), "text->image": (texts, tiles)}
    index = {}
    with PeakRSS() as memory:
        t = time.perf_counter()
        for name, (q, g) in pairs.items():
            index[name] = chunked_topk(q, g, args["k"])[1] if method == "chunked" else _unchunked(q, g, args["k"])
        seconds = time.perf_counter() - t
    result = {}
    for name, (q, g) in pairs.items():  # the retrieved rows' scores, recomputed the same way for both methods
        scores = [
            np.einsum("qd,qkd->qk", q[i : i + 4096], g[index[name][i : i + 4096]]) for i in range(0, len(q), 4096)
        ]
        result[name] = (index[name], np.concatenate(scores))
    out.put((seconds, memory.mb, result))


def retrieval(args: argparse.Namespace) -> tuple[float, float, float]:
    ctx = mp.get_context("spawn")
    runs = {}
    for method in ("chunked", "unchunked"):
        queue = ctx.Queue()
        proc = ctx.Process(target=_retrieval_child, args=(method, vars(args), queue))
        proc.start()
        runs[method] = queue.get()
        proc.join()
    same, gap = [], 0.0
    for name in runs["chunked"][2]:
        (a, sa), (b, sb) = runs["chunked"][2][name], runs["unchunked"][2][name]
        same.append(np.mean([set(x) == set(y) for x, y in zip(a, b)]))
        gap = max(gap, float(np.abs(np.sort(sa, 1) - np.sort(sb, 1)).max()))
    agreement = float(min(same))
    print(f"retrieval {args.gallery:,} tiles x {args.queries:,} captions, dim {args.dim}, top-{args.k} both ways")
    for method, (seconds, peak, _) in runs.items():
        print(f"  {method:<10} {seconds:7.2f} s   peak RSS growth {peak:8.1f} MB")
    print(f"  chunked / unchunked seconds   {runs['chunked'][0] / runs['unchunked'][0]:.2f}")
    print(f"  identical top-{args.k} sets  {agreement:.4%} of rows; largest top-{args.k} score gap {gap:.1e}")
    bound = bound_mb(args)
    print(f"  (targets: score gap <= 1e-5; chunked peak <= 1.5 x its bound {bound:.0f} MB)")
    return runs["chunked"][1], agreement, gap


def bound_mb(args: argparse.Namespace) -> float:
    """chunked_topk's score buffer at its default chunks: query_chunk x (gallery_chunk + k) float32."""
    import inspect

    defaults = inspect.signature(chunked_topk).parameters
    qc, gc = defaults["query_chunk"].default, defaults["gallery_chunk"].default
    return 4 * min(qc, max(args.gallery, args.queries)) * (min(gc, args.gallery) + args.k) / 2**20


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--slides", type=int, default=40)
    parser.add_argument("--tiles", type=int, default=64)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--gallery", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=1_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--target", type=float, default=0.8)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    failed = []
    with tempfile.TemporaryDirectory() as tmp:
        ratio = tuning(args, Path(tmp))
    if ratio < args.target:
        failed.append(f"tuning end to end / in memory {ratio:.2f} < {args.target}")
    peak, agreement, gap = retrieval(args)
    if peak > 1.5 * bound_mb(args):
        failed.append(f"chunked retrieval peak {peak:.0f} MB > 1.5 x its {bound_mb(args):.0f} MB bound")
    if gap > 1e-5:
        failed.append(f"chunked and unchunked top-k scores differ by {gap:.1e} > 1e-5 ({agreement:.4%} same sets)")
    for line in failed:
        print("MISSED:", line)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
