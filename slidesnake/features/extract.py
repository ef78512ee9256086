"""Batched patch-feature extraction: each patch is read once, at the coords file's resolution, and fed
to every configured encoder, so a cohort is read once per magnification however many encoders run.

DataLoader worker processes (each with its own OpenSlide handle) read whole batches and resize them,
in uint8, to every distinct encoder input size, so the model process only converts, normalises and
runs the model, and ships 1 byte per pixel instead of 4. On CUDA the batch is pinned, copied
non-blocking, run under autocast in channels_last, results are fetched one batch late so the GPU is
never idle while the host writes, and a CUDA out-of-memory halves the batch instead of failing the
job. Outputs follow DESIGN §2 and are written through ``atomic_path``.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from slidesnake.device import inference_context, select_device
from slidesnake.errors import InputError
from slidesnake.features.encoders import REGISTRY, Encoder, EncoderSpec, load_encoder, resize_patch
from slidesnake.io.atomic import atomic_path
from slidesnake.io.coords import plan_from_attrs, read_coords
from slidesnake.io.slide import ReadPlan, open_slide, read_patch
from slidesnake.progress import DEFAULT_INTERVAL_S, Progress

__all__ = [
    "CoordsMismatchError",
    "CpuShare",
    "PatchBatches",
    "auto_workers",
    "cpu_share",
    "extract_features",
    "select_device",
]

log = logging.getLogger(__name__)

# Attributes copied from the coords file into every features file, so a features file alone says
# at which resolution it was computed.
COPIED_ATTRS = (
    "magnification",
    "patch_size",
    "patch_size_level0",
    "target_mpp",
    "read_level",
    "read_downsample",
    "mpp_source",
)
PREFETCH_BATCHES = 2  # batches each worker keeps ready: enough to hide read jitter, bounded memory
PROBE_PATCHES = 4  # patches timed on one thread to measure the model's per-patch cost on the CPU
MAX_CUDA_WORKERS = 16  # readers beyond this rarely help one GPU and cost memory


class CoordsMismatchError(InputError):
    """The coords file does not fit the slide (another slide's or resolution's patches)."""


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, which schedulers set), not the machine's."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def auto_workers(device: torch.device, cores: int | None = None) -> int:
    """Reader processes for ``num_workers="auto"`` on CUDA: every core but the one feeding the GPU.
    (On the CPU, :func:`cpu_share` sizes them from measured costs instead.)"""
    cores = cores or available_cores()
    return max(1, min(cores - 1, MAX_CUDA_WORKERS))


@dataclass(frozen=True)
class CpuShare:
    """How a CPU-only run splits its cores: intra-op threads for the model, processes for reading."""

    threads: int
    workers: int


def cpu_share(read_s: float, model_s: float, cores: int, max_threads: int, workers: int | None = None) -> CpuShare:
    """Give the model and the readers cores in proportion to their per-patch costs (core-seconds).

    A tiny model with costly reads gets one thread and the readers the rest. When the readers' share
    is under half a core (a large model), a reader process would oversubscribe the cores, making the
    model's threads wait at every barrier for a thread the reader pre-empted (3-10x slower measured
    for all cores to each; 8% for ViT-B on 2 cores + one reader); the predicted faster of "read in
    this process between batches, model on every core" and "one core reads, the rest run the model"
    is taken instead. ``workers`` given (not None) is kept; only the model's threads are then chosen.
    """
    total = read_s + model_s
    model_fraction = model_s / total if total > 0 else 1.0
    cap = max(1, max_threads)
    threads = min(cap, max(1, round(cores * model_fraction)))
    reader_cores = cores * (1.0 - model_fraction)
    if workers is not None or reader_cores >= 0.5:
        return CpuShare(threads, max(1, round(reader_cores)) if workers is None else workers)
    in_line = model_s / min(cap, cores) + read_s
    dedicated = max(model_s / min(cap, cores - 1), read_s) if cores > 1 else float("inf")
    return CpuShare(min(cap, cores), 0) if in_line <= dedicated else CpuShare(min(cap, cores - 1), 1)


class PatchBatches(Dataset):
    """Batch ``i`` of a slide's patches (coords order), as one uint8 (B,S,S,3) tensor per input size S.

    A worker reads a whole batch per item (no per-patch IPC or collation) and resizes each patch once
    per distinct encoder input size, so one read feeds every encoder. The OpenSlide handle is opened
    lazily in whichever process reads, so every worker gets its own (the parent closes any it opened
    before the workers fork). Workers keep cv2's default threading: cv2.setNumThreads in a child forked
    after the parent used cv2's pool deadlocks.
    """

    def __init__(
        self, slide_path: str | os.PathLike, coords: np.ndarray, plan: ReadPlan, sizes: Sequence[int], batch_size: int
    ) -> None:
        self.slide_path = os.fspath(slide_path)
        self.coords = np.asarray(coords, dtype=np.int64).reshape(-1, 2)
        self.plan = plan
        self.sizes = tuple(sizes)
        self.batch_size = batch_size
        self._slide = None
        self._pid: int | None = None

    def __len__(self) -> int:
        return -(-len(self.coords) // self.batch_size)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, ...]:
        coords = self.coords[index * self.batch_size : (index + 1) * self.batch_size]
        out = [torch.empty((len(coords), size, size, 3), dtype=torch.uint8) for size in self.sizes]
        arrays = [t.numpy() for t in out]
        handle = self._handle()
        for row, (x, y) in enumerate(coords):
            patch = read_patch(handle, int(x), int(y), self.plan)
            for size, array in zip(self.sizes, arrays):
                resize_patch(patch, size, array[row])
        return tuple(out)

    def close(self) -> None:
        """Close this process's slide handle, if open."""
        if self._slide is not None and self._pid == os.getpid():
            self._slide.close()
        self._slide = None

    def _handle(self):
        if self._slide is None or self._pid != os.getpid():
            self._slide = open_slide(self.slide_path)
            self._pid = os.getpid()
        return self._slide


@dataclass
class _BatchEncoder:
    """One encoder's forward pass over a batch, in chunks that halve on CUDA out-of-memory."""

    encoder: Encoder
    chunk: int
    channels_last: bool

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        outputs, start = [], 0
        while start < len(batch):
            size = min(self.chunk, len(batch) - start)
            try:
                images = self.encoder.preprocess(batch[start : start + size])
                if self.channels_last:
                    images = images.contiguous(memory_format=torch.channels_last)
                outputs.append(self.encoder.encode_image(images).float())
            except torch.cuda.OutOfMemoryError:
                if size == 1:
                    raise
                self.chunk = max(1, size // 2)
                warnings.warn(
                    f"CUDA out of memory in encoder '{self.encoder.spec.name}' at batch {size}; continuing with {self.chunk}",
                    RuntimeWarning,
                    stacklevel=2,
                )
                torch.cuda.empty_cache()
                continue
            start += size
        return torch.cat(outputs) if outputs else torch.zeros((0, self.encoder.spec.dim))


def extract_features(
    slide_path: str | os.PathLike,
    coords_h5: str | os.PathLike,
    encoders: Sequence[str | Encoder],
    out_paths: Sequence[str | os.PathLike],
    *,
    batch_size: int = 64,
    num_workers: int | str = "auto",
    device: str = "auto",
    fallback_mpp: float | None = None,
    cores: int | None = None,
    progress_interval: float = DEFAULT_INTERVAL_S,
) -> list[int]:
    """Write one DESIGN §2 features h5 per encoder from a single pass over the slide's patches.

    ``encoders`` are names for :func:`load_encoder` or already-loaded encoders (moved to the device;
    to embed many slides without reloading). ``num_workers="auto"`` picks :func:`auto_workers` on CUDA and :func:`cpu_share`
    on the CPU, where the model's threads are also set for the run (and restored); both size themselves
    to ``cores`` (the job's threads), else to the cores this process may run on. Rows follow the coords
    file's order. An existing output with the same encoder, dim and coords is kept (not recomputed).
    Progress (patches/s, ETA) is logged every ``progress_interval`` seconds. Returns the number of
    patches written (or kept) per output.
    """
    if len(encoders) != len(out_paths):
        raise ValueError(f"{len(encoders)} encoders but {len(out_paths)} output paths; give one output per encoder")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    coords, attrs = read_coords(coords_h5)
    torch_device = select_device(device)
    cores = cores or available_cores()
    workers = _resolve_workers(num_workers, torch_device, cores)
    todo = [
        i for i, (enc, out) in enumerate(zip(encoders, out_paths)) if not _is_complete(out, _known_spec(enc), coords)
    ]
    loaded = {i: _on_device(encoders[i], torch_device) for i in todo}
    todo = [i for i in todo if not _is_complete(out_paths[i], loaded[i].spec, coords)]
    for i in set(range(len(encoders))) - set(todo):
        log.info("%s: kept existing features (%d patches)", out_paths[i], len(coords))
    if not todo:
        return [len(coords)] * len(encoders)

    common = {k: attrs[k] for k in COPIED_ATTRS if k in attrs}
    common["slide"] = os.fspath(slide_path)
    with h5py.File(coords_h5, "r") as f:
        coords_attrs = {k: v for k, v in f["coords"].attrs.items()}  # CLAM/TRIDENT read these on "coords"
    plan = _plan_for(slide_path, coords_h5, attrs, fallback_mpp) if len(coords) else None
    channels_last = torch_device.type == "cuda"
    runners = []
    for i in todo:
        if channels_last:
            loaded[i].to(memory_format=torch.channels_last)
        runners.append(_BatchEncoder(loaded[i], batch_size, channels_last))

    with contextlib.ExitStack() as stack:
        files = []
        for i, runner in zip(todo, runners):
            tmp = stack.enter_context(atomic_path(out_paths[i]))
            files.append(stack.enter_context(h5py.File(tmp, "w")))
            _init_output(files[-1], runner.encoder.spec, coords, common, coords_attrs)
        if plan is not None:
            sizes = sorted({r.encoder.spec.input_size for r in runners})
            dataset = PatchBatches(slide_path, coords, plan, sizes, batch_size)
            stack.callback(dataset.close)
            _run(dataset, runners, files, torch_device, workers, cores, progress_interval)
    for i in todo:
        log.info("%s: %d patches with %s", out_paths[i], len(coords), loaded[i].spec.name)
    return [len(coords)] * len(encoders)


def _resolve_workers(num_workers: int | str, device: torch.device, cores: int) -> int | None:
    """An explicit worker count, or None for 'auto' on the CPU (sized once costs are measured)."""
    if isinstance(num_workers, str) and num_workers.strip().lower() == "auto":
        return auto_workers(device, cores) if device.type == "cuda" else None
    try:
        workers = int(num_workers)
    except (TypeError, ValueError):
        workers = -1
    if workers < 0:
        raise ValueError(f"num_workers must be 'auto' or an integer >= 0, got {num_workers!r}")
    return workers


def _known_spec(encoder: str | Encoder) -> EncoderSpec | None:
    """The spec without loading anything: a loaded encoder's, or a registry entry's (else None)."""
    return encoder.spec if isinstance(encoder, Encoder) else REGISTRY.get(encoder.strip().lower())


def _on_device(encoder: str | Encoder, device: torch.device) -> Encoder:
    return encoder.to(device).eval() if isinstance(encoder, Encoder) else load_encoder(encoder, device)


def _plan_for(slide_path, coords_h5, attrs: dict[str, Any], fallback_mpp: float | None) -> ReadPlan:
    """Read plan from the slide and the coords file's magnification, checked against its level-0 size."""
    if "patch_size_level0" not in attrs:
        raise CoordsMismatchError(f"{coords_h5}: attribute 'patch_size_level0' missing; rerun patching for this slide")
    return plan_from_attrs(slide_path, attrs, os.fspath(coords_h5), fallback_mpp, error=CoordsMismatchError)


def _run(
    dataset: PatchBatches,
    runners: list[_BatchEncoder],
    files: list[h5py.File],
    device: torch.device,
    num_workers: int | None,
    cores: int,
    progress_interval: float = DEFAULT_INTERVAL_S,
) -> None:
    """Feed every batch to every encoder and write the rows; a batch's features are fetched after the
    next batch is queued, so on CUDA the device computes while the host waits on readers and h5.

    On the CPU the first batch is read here, timing the read and a one-thread probe of the models, and
    :func:`cpu_share` splits the cores before the readers start; that batch is not read again.
    """
    slot = [dataset.sizes.index(r.encoder.spec.input_size) for r in runners]
    names = "+".join(r.encoder.spec.name for r in runners)
    progress = Progress(
        len(dataset.coords),
        f"features {Path(dataset.slide_path).name} [{names}]",
        interval=progress_interval,
        logger=log,
    )
    threads = torch.get_num_threads()
    first: list[tuple[torch.Tensor, ...]] = []  # batches read here rather than by the workers
    try:
        with inference_context(device):
            if device.type != "cuda":
                batch, read_s = _timed_read(dataset, 0)
                dataset.close()  # not inherited by the workers
                model_s = _probe_seconds(runners, batch, slot)
                share = cpu_share(read_s, model_s, cores, threads, num_workers)
                log.info(
                    "CPU split: read %.2f ms/patch, model %.2f ms/patch on one thread -> %d model thread(s), %d reader(s)",
                    1000 * read_s,
                    1000 * model_s,
                    share.threads,
                    share.workers,
                )
                torch.set_num_threads(share.threads)
                first, num_workers = [batch], share.workers
            workers = (num_workers or 0) if len(dataset) > len(first) else 0
            loader = DataLoader(
                dataset,
                batch_size=None,
                sampler=range(len(first), len(dataset)),
                num_workers=workers,
                pin_memory=device.type == "cuda",
                prefetch_factor=PREFETCH_BATCHES if workers > 0 else None,
            )
            pending: tuple[int, list[torch.Tensor]] | None = None
            start = 0
            for batches in itertools.chain(first, iter(loader)):
                batches = [b.to(device, non_blocking=True) for b in batches]
                outputs = [runner(batches[k]) for runner, k in zip(runners, slot)]
                if pending is not None:
                    start = _write(files, *pending)
                pending = (start, outputs)
                progress.update(len(batches[0]))
            if pending is not None:
                _write(files, *pending)
    finally:
        torch.set_num_threads(threads)
        progress.close()


def _timed_read(dataset: PatchBatches, index: int) -> tuple[tuple[torch.Tensor, ...], float]:
    """Batch ``index`` and its read + resize seconds per patch."""
    start = time.perf_counter()
    batches = dataset[index]
    return batches, (time.perf_counter() - start) / max(1, len(batches[0]))


def _probe_seconds(runners: list[_BatchEncoder], batches: tuple[torch.Tensor, ...], slot: list[int]) -> float:
    """Marginal one-thread model seconds per patch, all encoders together: (t(PROBE_PATCHES) - t(1)) /
    (PROBE_PATCHES - 1) after a one-patch warm-up call, so per-call overhead (which a full batch
    amortises) and one-time setup do not count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    n = min(PROBE_PATCHES, len(batches[0]))
    seconds = []
    try:
        for size in (1, 1, n):
            start = time.perf_counter()
            for runner, k in zip(runners, slot):
                runner.encoder.encode_image(runner.encoder.preprocess(batches[k][:size]))
            seconds.append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)
    return max(0.0, seconds[2] - seconds[1]) / (n - 1) if n > 1 else seconds[1]


def _write(files: list[h5py.File], start: int, outputs: list[torch.Tensor]) -> int:
    """Rows ``start:`` of every output file; returns the next start row."""
    stop = start + len(outputs[0])
    for f, out in zip(files, outputs):
        f["features"][start:stop] = out.cpu().numpy()
    return stop


def _init_output(
    f: h5py.File, spec: EncoderSpec, coords: np.ndarray, common: dict[str, Any], coords_attrs: dict[str, Any]
) -> None:
    f.create_dataset("features", shape=(len(coords), spec.dim), dtype=np.float32)
    f.create_dataset("coords", data=coords.astype(np.int64).reshape(-1, 2)).attrs.update(coords_attrs)
    f.attrs.update(common)
    f.attrs.update(
        encoder=spec.name,
        source=spec.source,
        dim=spec.dim,
        normalized=spec.normalized,
        projected=spec.projected,
        image_size=spec.image_size,
    )


def _is_complete(path: str | os.PathLike, spec: EncoderSpec | None, coords: np.ndarray) -> bool:
    """True when ``path`` already holds this encoder's features for exactly these coords."""
    if spec is None or not Path(path).is_file():
        return False
    try:
        with h5py.File(path, "r") as f:
            return (
                f.attrs.get("encoder") == spec.name
                and int(f.attrs.get("dim", -1)) == spec.dim
                and f["features"].shape == (len(coords), spec.dim)
                and np.array_equal(f["coords"][()].reshape(-1, 2), coords)
            )
    except (OSError, KeyError, ValueError):
        return False
