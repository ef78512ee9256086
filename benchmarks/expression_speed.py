"""Spatial expression speed, each figure against a reference measured in the same run.

1. Retrieval prediction (BLEEP/HECLIP top-50 average) for Q query spots against R reference spots and G
   genes: our chunked retrieval (similarities, top-k and a sparse weight matmul per query chunk) vs an
   unchunked NumPy reference (the full Q x R similarity matrix and arg-partition, then each query's
   mean over its 50 neighbours' rows). Seconds, peak traced memory, and the largest difference.
2. Training throughput end to end from tile files (h5 tiles read by a DataLoader, augmented, through the
   image tower and heads, forward + backward + step) vs the same forward + backward + step on the same
   tiles held in memory as one tensor, batch by batch in alternation. Target ratio >= 0.8.

    python benchmarks/expression_speed.py [--queries 10000 --references 10000 --genes 3000]
"""

from __future__ import annotations

import argparse
import gc
import itertools
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np


def _traced(fn, *args, **kwargs):
    gc.collect()
    tracemalloc.start()
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    seconds = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return out, seconds, peak / 2**20


def unchunked_reference(query, reference, expression, k):
    """Naive NumPy: full similarity matrix and top-k, then the mean of each query's k neighbours."""
    q = query / np.linalg.norm(query, axis=1, keepdims=True)
    r = reference / np.linalg.norm(reference, axis=1, keepdims=True)
    sims = q @ r.T
    idx = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    return np.stack([expression[row].mean(axis=0) for row in idx])


def bench_retrieval(n_query: int, n_ref: int, n_genes: int, dim: int, k: int, chunk: int) -> None:
    from slidesnake.models.expression.retrieval import retrieve

    rng = np.random.default_rng(0)
    query = rng.normal(size=(n_query, dim)).astype(np.float32)
    reference = rng.normal(size=(n_ref, dim)).astype(np.float32)
    expression = rng.gamma(1.0, 1.0, size=(n_ref, n_genes)).astype(np.float32)
    ours, t_ours, m_ours = _traced(retrieve, query, reference, expression, k=k, chunk=chunk)
    ref, t_ref, m_ref = _traced(unchunked_reference, query, reference, expression, k)
    diff = float(np.abs(ours - ref).max())
    print(f"retrieval {n_query} queries x {n_ref} references x {n_genes} genes, top-{k}, dim {dim}:")
    print(
        f"  chunked (ours, chunk {chunk}): {t_ours:.2f} s, peak {m_ours:.0f} MiB (output {ours.nbytes / 2**20:.0f} MiB)"
    )
    print(f"  unchunked NumPy reference:     {t_ref:.2f} s, peak {m_ref:.0f} MiB")
    print(f"  speed-up {t_ref / t_ours:.2f}x, memory {m_ref / m_ours:.2f}x less, max |diff| {diff:.2e}")


def _tile_file(folder: Path, n_tiles: int) -> Path:
    """Real spot tiles: synthetic Visium sections, tiles read at 0.5 µm/px, repeated up to n_tiles."""
    import h5py

    from slidesnake.data.demo_visium import DemoVisiumConfig, section_ids, write_section
    from slidesnake.data.visium import find_visium_files, read_visium
    from slidesnake.tissue.spots import write_spot_coords, write_spot_tiles

    cfg = DemoVisiumConfig(n_sections=2, size_um=2400)
    section = section_ids(cfg)[0]
    write_section(cfg, section, folder / section)
    files = find_visium_files(folder / section)
    write_spot_coords(read_visium(files, section), files.image, folder / "spots.h5")
    write_spot_tiles(files.image, folder / "spots.h5", folder / "tiles.h5")
    with h5py.File(folder / "tiles.h5", "r+") as f:
        n = len(f["tiles"])
        if n < n_tiles:
            tiles = f["tiles"][()]
            del f["tiles"]
            reps = np.resize(np.arange(n), n_tiles)
            size = tiles.shape[1]
            f.create_dataset("tiles", data=tiles[reps], chunks=(1, size, size, 3))
    return folder / "tiles.h5"


def bench_training(encoder_name: str, n_tiles: int, batch: int, epochs: int, workers: int, genes: int) -> None:
    import h5py
    import torch

    from slidesnake.features.encoders import load_encoder
    from slidesnake.models.expression.contrastive import (
        ContrastiveConfig,
        ImageExpressionModel,
        TileFiles,
        _batches,
        _set_trainable,
    )

    torch.set_num_threads(max(1, torch.get_num_threads()))
    with tempfile.TemporaryDirectory() as tmp:
        path = _tile_file(Path(tmp), n_tiles)
        with h5py.File(path) as f:
            tiles = torch.from_numpy(f["tiles"][()])
        n = len(tiles)
        rng = np.random.default_rng(0)
        y = torch.as_tensor(rng.gamma(1.0, 1.0, size=(n, genes)).astype(np.float32))
        cfg = ContrastiveConfig(batch_size=batch, tune="full", num_workers=workers)
        index = np.arange(n)

        def trainer():
            torch.manual_seed(0)
            encoder = load_encoder(encoder_name)
            model = ImageExpressionModel("heclip", encoder.spec.dim, genes, cfg, encoder)
            _set_trainable(model, cfg)
            opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
            model.train()

            def step(batch) -> int:
                xb, yb = batch
                loss = model.loss(xb, yb)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                return len(yb)

            return step

        size = load_encoder(encoder_name).spec.image_size
        source = TileFiles([str(path)], [(0, i) for i in range(n)], augment=True, image_size=size)
        steps = {"memory": trainer(), "files": trainer()}
        inputs = {"memory": tiles, "files": source}
        rates = []
        # batches alternate between the two (one from memory, one from the files, in turns: the file batch's time
        # includes waiting for its reader), so a load burst on a shared machine hits both alike; epoch 0
        # warms up the allocator, the persistent reader workers and the page cache
        for e in range(epochs + 1):
            streams = {k: iter(_batches(inputs[k], y, index, cfg, shuffle=True, seed=e)) for k in steps}
            seconds, seen = dict.fromkeys(steps, 0.0), dict.fromkeys(steps, 0)
            for b in itertools.count():
                order = ("memory", "files") if b % 2 == 0 else ("files", "memory")  # neither always goes first
                items = {}
                for key in order:
                    t0 = time.perf_counter()
                    items[key] = next(streams[key], None)
                    if items[key] is not None:
                        seen[key] += steps[key](items[key])
                        seconds[key] += time.perf_counter() - t0
                if any(item is None for item in items.values()):
                    break
            if e:
                rates.append((seen["memory"] / seconds["memory"], seen["files"] / seconds["files"]))
        mem, files = np.array(rates).T
        print(f"training throughput, {encoder_name} tuned end to end, {n} tiles of {tiles.shape[1]} px, "
              f"batch {batch}, {epochs} epochs, batches alternating between the two (median):")  # fmt: skip
        print(f"  in-memory uint8 tensors (preprocess + forward + backward + step): {np.median(mem):.1f} tiles/s")
        print(f"  tile files, read + augmented by {workers} reader(s):                 {np.median(files):.1f} tiles/s")
        print(
            f"  ratio files / in-memory = {np.median(files / mem):.2f} (per epoch {np.round(files / mem, 2).tolist()}; target >= 0.8)"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--queries", type=int, default=10_000)
    ap.add_argument("--references", type=int, default=10_000)
    ap.add_argument("--genes", type=int, default=3_000)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--top-k", type=int, default=50)
    ap.add_argument("--chunk", type=int, default=1024)
    ap.add_argument("--encoder", default="tiny-clip")
    ap.add_argument("--tiles", type=int, default=512)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--skip", choices=("retrieval", "training"), action="append", default=[])
    args = ap.parse_args()
    if "retrieval" not in args.skip:
        bench_retrieval(args.queries, args.references, args.genes, args.dim, args.top_k, args.chunk)
    if "training" not in args.skip:
        bench_training(args.encoder, args.tiles, args.batch, args.epochs, args.workers, 256)


if __name__ == "__main__":
    main()
