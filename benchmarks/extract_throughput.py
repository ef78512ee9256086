"""Feature-extraction throughput: pure model vs end-to-end, and end-to-end vs a bare OpenSlide read loop.

Writes a synthetic 20x Aperio slide with a grid of at least 2,000 patches (and one 4x larger), then
runs each measured stage in its own subprocess, which reports its patches/s and its own peak RSS:

- OpenSlide-only: one process reading the same regions (``read_patch``) and doing nothing else;
- (a) model-only: uint8 patches already in memory at the encoder's input size -> preprocess (convert,
  normalise) + encode, batch by batch, features fetched to the host;
- (b) end-to-end: ``extract_features`` (readers, resize, model, h5 output) with the encoder already
  loaded (its load time is printed apart: it is paid once per job, not per patch);

for tiny-clip on every patch and for a random-weight ViT-B-32 on the first ``--vit-patches`` (same
batch size for a and b). (a) is timed at the default torch threads and at one thread, and the faster
is the reference. Stages alternate ``--repeats`` times and the best run of each is kept, as load from
other processes only ever slows a run down; each also reports its CPU milliseconds per patch (its own
process and its reader workers), which shows whether a run was starved of cores. Peak memory is the
high-water RSS (/proc VmHWM, which unlike ru_maxrss restarts at exec) of tiny-clip end-to-end on the
slide and on the 4x slide, for the main process and for the largest reader worker.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/extract_throughput.py [--grid 45] [--vit-patches 256]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import open_clip
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from slidesnake.device import inference_context, select_device  # noqa: E402
from slidesnake.features.encoders import OPENAI_MEAN, OPENAI_STD, load_encoder, resize_patches  # noqa: E402
from slidesnake.features.extract import extract_features  # noqa: E402
from slidesnake.io.atomic import write_h5  # noqa: E402
from slidesnake.io.coords import read_coords  # noqa: E402
from slidesnake.io.slide import open_slide, read_patch, read_plan, slide_info  # noqa: E402
from slidesnake.io.svs import write_svs  # noqa: E402

PATCH = 256
COORDS_ATTRS = {"patch_size": PATCH, "patch_size_level0": PATCH, "target_mpp": 0.5, "magnification": 20.0}


def texture(x: int, y: int, w: int, h: int, downsample: float) -> np.ndarray:
    """Deterministic stain-like texture for any region of any level (so the slide never sits in memory)."""
    yy, xx = np.mgrid[y : y + h, x : x + w].astype(np.float32) * downsample
    r = 180 + 50 * np.sin(xx / 23.0) * np.cos(yy / 31.0)
    g = 110 + 60 * np.sin((xx + yy) / 47.0)
    b = 170 + 40 * np.cos(xx / 13.0 - yy / 17.0)
    return np.clip(np.stack([r, g, b], axis=-1), 0, 255).astype(np.uint8)


def make_slide(folder: Path, name: str, grid: int) -> tuple[Path, Path]:
    """A grid x grid-patch 20x slide and the coords file of all its patches."""
    side = grid * PATCH
    slide = write_svs(folder / f"{name}.svs", texture, size=(side, side), mpp=0.5, app_mag=20.0, downsamples=(1, 4, 16))
    coords = np.array([(x * PATCH, y * PATCH) for y in range(grid) for x in range(grid)], dtype=np.int64)
    write_h5(folder / f"{name}.h5", {"coords": coords}, COORDS_ATTRS)
    return slide, folder / f"{name}.h5"


def vit_b32_encoder_dir(folder: Path) -> Path:
    """A random-weight ViT-B-32 saved as an open_clip folder, loaded through the real local-dir path."""
    out = folder / "vit-b-32"
    out.mkdir(exist_ok=True)
    cfg = open_clip.get_model_config("ViT-B-32")
    (out / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": cfg, "preprocess_cfg": {"mean": OPENAI_MEAN, "std": OPENAI_STD}})
    )
    torch.manual_seed(0)
    torch.save(open_clip.CLIP(**cfg).state_dict(), out / "open_clip_pytorch_model.bin")
    return out


# ---- stages: each runs in a fresh process and returns its figures --------------------------------


def cpu_seconds() -> float:
    """User + system CPU of this process and its reaped children (the reader workers)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def timed(n: int, fn) -> dict:
    cpu, start = cpu_seconds(), time.perf_counter()
    fn()
    wall = time.perf_counter() - start
    return {"patches_per_s": n / wall, "cpu_ms_per_patch": 1000 * (cpu_seconds() - cpu) / n}


def stage_read(slide: str, coords_h5: str) -> dict:
    coords, _ = read_coords(coords_h5)
    handle = open_slide(slide)
    plan = read_plan(slide_info(handle), 20.0, PATCH)
    return timed(len(coords), lambda: [read_patch(handle, int(x), int(y), plan) for x, y in coords])


def _warm_up(encoder, batch_size: int, device: torch.device) -> None:
    """One batch through the model first (kernel selection, allocator): both a and b get it."""
    size = encoder.spec.image_size
    with inference_context(device):
        encoder.encode_image(
            encoder.preprocess(torch.zeros((batch_size, size, size, 3), dtype=torch.uint8))
        ).float().cpu()


def stage_model(slide: str, coords_h5: str, encoder_name: str, batch_size: int, device: str, threads: int) -> dict:
    torch_device = select_device(device)
    torch.set_num_threads(threads or torch.get_num_threads())
    encoder = load_encoder(encoder_name, torch_device)
    coords, _ = read_coords(coords_h5)
    handle = open_slide(slide)
    plan = read_plan(slide_info(handle), 20.0, PATCH)
    raw = np.stack([read_patch(handle, int(x), int(y), plan) for x, y in coords])
    patches = torch.from_numpy(resize_patches(raw, encoder.spec.image_size)).to(torch_device)
    del raw
    _warm_up(encoder, batch_size, torch_device)

    def run() -> None:
        with inference_context(torch_device):
            for i in range(0, len(patches), batch_size):
                encoder.encode_image(encoder.preprocess(patches[i : i + batch_size])).float().cpu()

    return {**timed(len(patches), run), "threads": torch.get_num_threads()}


def stage_extract(
    slide: str, coords_h5: str, encoder_name: str, batch_size: int, device: str, num_workers: str, out: str
) -> dict:
    torch_device = select_device(device)
    start = time.perf_counter()
    encoder = load_encoder(encoder_name, torch_device)
    load_s = time.perf_counter() - start
    _warm_up(encoder, batch_size, torch_device)
    coords, _ = read_coords(coords_h5)
    workers = num_workers if num_workers == "auto" else int(num_workers)
    result = timed(
        len(coords),
        lambda: extract_features(
            slide, coords_h5, [encoder], [out], batch_size=batch_size, num_workers=workers, device=device
        ),
    )
    result["load_s"] = load_s
    if torch_device.type == "cuda":
        result["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return result


STAGES = {"read": stage_read, "model": stage_model, "extract": stage_extract}


def vm_hwm_mb(pid: int | str = "self") -> float:
    """Peak resident set of a live process (VmHWM), in MB; 0 once it has gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:  # the process has exited
        return 0.0
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


class ChildPeak(threading.Thread):
    """Polls the peak RSS of this process's children (reader workers) until stopped."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak_mb = 0.0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.05):
            for children in Path("/proc/self/task").glob("*/children"):
                for pid in children.read_text().split():
                    self.peak_mb = max(self.peak_mb, vm_hwm_mb(pid))


def stage_main(name: str, kwargs: dict) -> None:
    poller = ChildPeak()
    poller.start()
    result = STAGES[name](**kwargs)
    poller.done.set()
    poller.join()
    result["peak_rss_mb"] = vm_hwm_mb()
    result["worker_peak_rss_mb"] = poller.peak_mb
    print(json.dumps(result))


def run_stage(name: str, **kwargs) -> dict:
    """Run one stage in a fresh interpreter and parse its JSON line."""
    cmd = [sys.executable, __file__, "--stage", name, "--stage-args", json.dumps(kwargs)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"stage {name} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def best(runs: list[dict]) -> dict:
    return max(runs, key=lambda r: r["patches_per_s"])


def fmt(r: dict) -> str:
    return f"{r['patches_per_s']:8.1f} patches/s ({r['cpu_ms_per_patch']:6.2f} CPU-ms/patch)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--grid", type=int, default=45, help="slide is grid x grid patches (45 -> 2,025); the large one is 2*grid"
    )
    parser.add_argument("--vit-patches", type=int, default=256, help="patches for ViT-B-32 (0 = all)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--num-workers", default="auto")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeats", type=int, default=2, help="alternating runs of each stage; the best is kept")
    parser.add_argument("--stage", choices=sorted(STAGES), help=argparse.SUPPRESS)
    parser.add_argument("--stage-args", default="{}", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stage:
        stage_main(args.stage, json.loads(args.stage_args))
        return

    device = select_device(args.device)
    cores = len(os.sched_getaffinity(0))
    print(
        f"device {device}, default torch threads {torch.get_num_threads()}, cores {cores}, workers {args.num_workers}, "
        f"batch {args.batch_size}, repeats {args.repeats}, load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}"
    )
    common = {"batch_size": args.batch_size, "device": args.device}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        start = time.perf_counter()
        slide, coords_h5 = make_slide(folder, "slide", args.grid)
        big_slide, big_h5 = make_slide(folder, "slide4x", 2 * args.grid)
        vit_dir = vit_b32_encoder_dir(folder)
        n_all = args.grid**2
        n_vit = min(args.vit_patches or n_all, n_all)
        vit_h5 = folder / "vit.h5"
        write_h5(vit_h5, {"coords": read_coords(coords_h5)[0][:n_vit]}, COORDS_ATTRS)
        print(f"slides of {n_all} and {4 * n_all} patches of {PATCH} px written in {time.perf_counter() - start:.1f} s")

        reads, tiny_b = [], None
        for label, name, h5, n in (
            ("tiny-clip", "tiny-clip", coords_h5, n_all),
            ("ViT-B-32 (random)", str(vit_dir), vit_h5, n_vit),
        ):
            a_runs, b_runs = [], []
            for rep in range(args.repeats):
                if name == "tiny-clip":
                    reads.append(run_stage("read", slide=str(slide), coords_h5=str(coords_h5)))
                for threads in sorted({1, torch.get_num_threads()}):
                    a_runs.append(
                        run_stage(
                            "model", slide=str(slide), coords_h5=str(h5), encoder_name=name, threads=threads, **common
                        )
                    )
                b_runs.append(
                    run_stage(
                        "extract",
                        slide=str(slide),
                        coords_h5=str(h5),
                        encoder_name=name,
                        num_workers=args.num_workers,
                        out=str(folder / f"{label[:4]}{rep}.h5"),
                        **common,
                    )
                )
            a, b = best(a_runs), best(b_runs)
            print(
                f"{label} n={n}: (a) model-only {fmt(a)} at {a['threads']} thread(s)   runs: "
                + ", ".join(f"{r['patches_per_s']:.1f}@{r['threads']}t" for r in a_runs)
            )
            print(
                f"{label} n={n}: (b) end-to-end {fmt(b)}   runs: "
                + ", ".join(f"{r['patches_per_s']:.1f}" for r in b_runs)
                + f"   (model load {b['load_s']:.1f} s, outside b)"
            )
            print(f"{label} n={n}: b/a = {b['patches_per_s'] / a['patches_per_s']:.2f}")
            if name == "tiny-clip":
                reader, tiny_b = best(reads), b
                print(
                    f"OpenSlide-only read loop (1 process, {n} patches): {fmt(reader)}   runs: "
                    + ", ".join(f"{r['patches_per_s']:.1f}" for r in reads)
                )
                print(f"tiny-clip end-to-end / OpenSlide-only = {b['patches_per_s'] / reader['patches_per_s']:.2f}")

        big = run_stage(
            "extract",
            slide=str(big_slide),
            coords_h5=str(big_h5),
            encoder_name="tiny-clip",
            num_workers=args.num_workers,
            out=str(folder / "big.h5"),
            **common,
        )
        for label, n, r in (("slide", n_all, tiny_b), ("4x slide", 4 * n_all, big)):
            print(
                f"peak RSS, tiny-clip end-to-end on {label:8s} ({n:5d} patches): main {r['peak_rss_mb']:6.0f} MB, "
                f"largest worker {r['worker_peak_rss_mb']:6.0f} MB  ({fmt(r)})"
            )
        print(
            f"peak RSS ratio 4x/1x: main {big['peak_rss_mb'] / tiny_b['peak_rss_mb']:.2f}, "
            f"worker {big['worker_peak_rss_mb'] / tiny_b['worker_peak_rss_mb']:.2f}"
        )
        if "cuda_peak_mb" in big:
            print(f"peak CUDA memory (tiny-clip, 4x slide): {big['cuda_peak_mb']:.0f} MB")
        print(f"load average at end {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
