"""The GPU measurements of benchmarks/gpu_check.sh, each printed as a figure against a reference run in
the same process: encoder throughput fp32 vs bf16 autocast vs bf16 + channels_last, host->device copies
from pinned vs pageable memory, the extractor's out-of-memory halving under a memory cap (same features
as an uncapped run), and one training step (forward, backward, optimiser) of every MIL model.

    python benchmarks/gpu_check.py [--quick] [--allow-cpu]

``--allow-cpu`` runs the same code on the CPU with tiny sizes (for tests of this script; its figures mean
nothing); without it the script refuses to run when CUDA is not available.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from extract_throughput import vit_b32_encoder_dir  # noqa: E402

from slidesnake.device import autocast_dtype, select_device  # noqa: E402
from slidesnake.features.encoders import load_encoder  # noqa: E402
from slidesnake.features.extract import _BatchEncoder  # noqa: E402
from slidesnake.models.mil import MODELS, build_model  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def rate(fn, n_items: int, device: torch.device, repeats: int) -> float:
    """Best items/s of ``fn()`` over ``repeats`` runs after one warm-up."""
    fn()
    sync(device)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - start)
    return n_items / best


def encoder_precision(encoder, device: torch.device, batch: int, repeats: int) -> None:
    patches = torch.randint(0, 256, (batch, 224, 224, 3), dtype=torch.uint8)
    on_device = patches.to(device)
    dtype = autocast_dtype(device) or torch.bfloat16

    def run(autocast: bool, channels_last: bool):
        def go():
            with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=autocast):
                images = encoder.preprocess(on_device)
                images = images.contiguous(
                    memory_format=torch.channels_last if channels_last else torch.contiguous_format
                )
                encoder.encode_image(images).float().cpu()

        return go

    fp32 = rate(run(False, False), batch, device, repeats)
    bf16 = rate(run(True, False), batch, device, repeats)
    bf16_cl = rate(run(True, True), batch, device, repeats)
    print(f"encoder ViT-B-32 (random), batch {batch}: fp32 {fp32:.0f} patches/s")
    print(f"  {dtype} autocast           {bf16:.0f} patches/s  ({bf16 / fp32:.2f}x fp32)")
    print(
        f"  {dtype} + channels_last    {bf16_cl:.0f} patches/s  ({bf16_cl / fp32:.2f}x fp32, {bf16_cl / bf16:.2f}x autocast)"
    )
    with torch.inference_mode():
        ref = encoder.encode_image(encoder.preprocess(on_device[:16])).float()
        with torch.autocast(device.type, dtype=dtype):
            low = encoder.encode_image(encoder.preprocess(on_device[:16])).float()
    cos = torch.nn.functional.cosine_similarity(ref, low).min().item()
    print(f"  autocast vs fp32 features: min cosine {cos:.4f} over 16 patches")


def pinned_copies(device: torch.device, batch: int, repeats: int) -> None:
    pageable = torch.randint(0, 256, (batch, 224, 224, 3), dtype=torch.uint8)
    pinned = pageable.pin_memory() if device.type == "cuda" else pageable
    mb = pageable.numel() / 1e6
    slow = rate(lambda: pageable.to(device, non_blocking=True), 1, device, repeats)
    fast = rate(lambda: pinned.to(device, non_blocking=True), 1, device, repeats)
    print(f"host->device copy of a {mb:.0f} MB uint8 batch: pageable {slow * mb / 1e3:.2f} GB/s, "
          f"pinned {fast * mb / 1e3:.2f} GB/s ({fast / slow:.2f}x)")  # fmt: skip


def oom_halving(encoder, device: torch.device, batch: int) -> None:
    """Cap this process's GPU memory so the first chunk cannot fit; the encoder must halve and still
    return the features of an uncapped run."""
    patches = torch.randint(0, 256, (batch, 224, 224, 3), dtype=torch.uint8).to(device)
    with torch.inference_mode():
        reference = _BatchEncoder(encoder, 8, False)(patches).cpu()
    if device.type != "cuda":
        print("out-of-memory halving: skipped (needs CUDA to run out of memory)")
        return
    torch.cuda.empty_cache()
    free, total = torch.cuda.mem_get_info(device)
    used = torch.cuda.memory_allocated(device)
    cap_bytes = used + 1.5e9  # room for a few dozen ViT-B-32 patches, not for the whole batch at once
    torch.cuda.set_per_process_memory_fraction(min(0.95, cap_bytes / total), device)
    runner = _BatchEncoder(encoder, batch, False)
    try:
        with warnings.catch_warnings(record=True) as caught, torch.inference_mode():
            warnings.simplefilter("always")
            start = time.perf_counter()
            out = runner(patches).cpu()
            seconds = time.perf_counter() - start
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, device)
    halvings = [w for w in caught if "out of memory" in str(w.message)]
    diff = (out - reference).abs().max().item()
    print(f"out-of-memory halving: cap {cap_bytes / 1e9:.1f} GB, batch {batch} -> chunk {runner.chunk} after "
          f"{len(halvings)} halvings, {batch / seconds:.0f} patches/s, max |diff| vs uncapped {diff:.2e}")  # fmt: skip
    if not halvings or diff > 1e-3:
        raise SystemExit("FAIL: the capped run did not halve, or its features differ from the uncapped run")


def _train_step(model, optimiser, features, coords, mask, device: torch.device):
    """One optimiser step of ``model`` on one bag (label 1), as the training loop takes it."""

    def step():
        optimiser.zero_grad(set_to_none=True)
        out = model(features, coords=coords, mask=mask, label=torch.tensor(1))
        loss = torch.nn.functional.cross_entropy(out.logits.view(1, -1), torch.tensor([1], device=device))
        if out.aux_loss is not None:
            loss = loss + out.aux_loss
        loss.backward()
        optimiser.step()

    return step


def training_steps(device: torch.device, n_instances: int, dim: int, repeats: int) -> None:
    print(f"one training step (forward + backward + AdamW), {n_instances} instances x {dim}:")
    torch.manual_seed(0)
    flat = torch.randn(n_instances, dim, device=device)
    side = int(n_instances**0.5) + 1
    coords = torch.stack(torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij"), -1).reshape(-1, 2)
    coords = (coords[:n_instances] * 256).to(device)
    n5 = max(1, n_instances // 16)
    hier = torch.randn(n5, 16, dim, device=device)
    mask = torch.ones(n5, 16, dtype=torch.bool, device=device)
    for name, cls in MODELS.items():
        model = build_model(name, dim, 2).to(device).train()
        optimiser = torch.optim.AdamW(model.parameters(), lr=1e-4)
        hierarchical = cls.input_kind == "hierarchy"
        features = hier if hierarchical else flat
        bag_coords = coords[:n5] if hierarchical else coords

        step = _train_step(model, optimiser, features, bag_coords, mask if hierarchical else None, device)

        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        steps = rate(step, 1, device, repeats)
        peak = torch.cuda.max_memory_allocated(device) / 1e6 if device.type == "cuda" else float("nan")
        print(f"  {name:10s} {1e3 / steps:8.1f} ms/step   peak {peak:8.0f} MB")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    parser.add_argument("--allow-cpu", action="store_true", help="run on the CPU (tests of this script only)")
    args = parser.parse_args()
    if not torch.cuda.is_available() and not args.allow_cpu:
        print("gpu_check: CUDA is not available on this machine; nothing to measure (run it on a CUDA machine)")
        return 0
    device = select_device("auto")
    small = args.quick or device.type != "cuda"
    batch, repeats = (16, 1) if small else (512, 3)
    print(
        f"device: {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}, torch {torch.__version__}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        encoder = load_encoder(str(vit_b32_encoder_dir(Path(tmp))), device)
        encoder_precision(encoder, device, batch, repeats)
        pinned_copies(device, batch, repeats)
        oom_halving(encoder, device, 64 if small else 2048)
    training_steps(device, 256 if small else 16384, 64 if small else 1024, repeats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
