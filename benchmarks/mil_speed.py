"""Forward+backward time and peak memory per MIL model on one 10,000-instance bag at D=512 (CPU).

Prints per model: seconds per bag (median of --repeats), the ratio to ABMIL (the reference on the
same bag), and the peak RSS of a fresh process that ran only that model (its memory, not the
largest model's so far). Run: .venv/bin/python benchmarks/mil_speed.py
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import statistics
import time

import numpy as np
import torch

from slidesnake.models.mil import MODELS, build_model


def _bag(n: int, dim: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random features on a square 256-px grid, plus the 5x/20x hierarchy view of the same patches."""
    side = int(np.ceil(np.sqrt(n)))
    cells = np.stack(np.divmod(np.arange(n), side), axis=1)[:, ::-1]
    coords = torch.from_numpy(cells * 256).long()
    features = torch.randn(n, dim)
    parent = cells // 4
    keys, inverse = np.unique(parent, axis=0, return_inverse=True)
    slot = (cells[:, 1] % 4) * 4 + cells[:, 0] % 4
    hier = torch.zeros(len(keys), 16, dim)
    mask = torch.zeros(len(keys), 16, dtype=torch.bool)
    hier[inverse.reshape(-1), slot] = features
    mask[inverse.reshape(-1), slot] = True
    return features, coords, hier, mask


def _time_model(name: str, instances: int, dim: int, repeats: int) -> tuple[float, float]:
    """(median seconds per forward+backward, peak RSS in MB) of ``name`` in this (fresh) process."""
    torch.manual_seed(0)
    features, coords, hier, mask = _bag(instances, dim)
    model = build_model(name, dim, 2).train()
    times = []
    for _ in range(repeats + 1):  # first run warms up
        start = time.perf_counter()
        if model.input_kind == "hierarchy":
            out = model(hier, mask=mask, label=torch.tensor([1]))
        else:
            out = model(features, coords=coords, label=torch.tensor([1]))
        loss = out.logits.sum()
        loss = loss + (out.aux_loss if out.aux_loss is not None else 0)
        loss = loss + (out.extra_logits.sum() if out.extra_logits is not None else 0)
        loss.backward()
        model.zero_grad()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:]), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--instances", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", nargs="*", default=list(MODELS))
    args = parser.parse_args()
    print(f"bag: {args.instances} instances, D={args.dim}, torch threads={torch.get_num_threads()}")
    results = {}
    with mp.get_context("spawn").Pool(1, maxtasksperchild=1) as pool:  # one fresh process per model
        for name in ["abmil", *[m for m in args.models if m != "abmil"]]:
            seconds, peak = pool.apply(_time_model, (name, args.instances, args.dim, args.repeats))
            results[name] = seconds
            print(
                f"{name:10s} {seconds:8.3f} s/bag  x{seconds / results['abmil']:6.2f} vs abmil  peak RSS {peak:7.0f} MB"
            )


if __name__ == "__main__":
    main()
