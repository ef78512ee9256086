"""Device selection and the inference settings that go with it (autocast dtype, memory format).

Shared by extraction, text embedding, training and heatmaps (DESIGN §1: what two layers share lives in
the lower one), so every job picks its device the same way: CUDA when present and asked for, the CPU
otherwise, and full precision on the CPU so CPU results are exact references for tests.

Which GPU: a job that was given GPUs (``CUDA_VISIBLE_DEVICES`` set, as SLURM and most schedulers do) uses
the first one it sees; otherwise (a multi-GPU workstation running ``snakemake --cores N``) it takes the GPU
with the most free memory, so concurrent jobs spread over the cards instead of all landing on device 0.
:func:`visible_gpu_count` is torch-free: the Snakefile calls it at parse time.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from slidesnake.errors import InputError

if TYPE_CHECKING:  # torch is imported where a device is chosen, not by the Snakefile's visible_gpu_count
    import torch

NVIDIA_PROC = "/proc/driver/nvidia/gpus"


class DeviceUnavailableError(InputError, RuntimeError):
    """A specific device was requested (``cuda``, ``mps``) but this machine has none."""


def visible_gpu_count(environ: dict[str, str] | None = None, proc: str | os.PathLike = NVIDIA_PROC) -> int:
    """GPUs this process may use, without importing torch: the entries of ``CUDA_VISIBLE_DEVICES`` when
    set (empty or ``-1`` hides all), else the NVIDIA driver's device list, else 0."""
    env = os.environ if environ is None else environ
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        entries = [e for e in (x.strip() for x in visible.split(",")) if e]
        if entries and entries[0].startswith("-"):  # "-1": no device; CUDA stops at the first invalid id
            return 0
        return len(entries)
    path = Path(proc)
    return sum(1 for _ in path.iterdir()) if path.is_dir() else 0


def pick_cuda_index(environ: dict[str, str] | None = None) -> int:
    """The CUDA device index a job uses: 0 (the first of the GPUs it was given) when ``CUDA_VISIBLE_DEVICES``
    is set, else the device with the most free memory (lowest index on ties)."""
    import torch

    env = os.environ if environ is None else environ
    count = torch.cuda.device_count()
    if env.get("CUDA_VISIBLE_DEVICES") is not None or count <= 1:
        return 0
    free = [torch.cuda.mem_get_info(i)[0] for i in range(count)]
    return max(range(count), key=lambda i: (free[i], -i))


def select_device(preference: str = "auto") -> torch.device:
    """``auto`` -> ``cuda`` when available, else ``cpu``; an explicit device must exist. ``cuda`` (and
    ``auto`` on a CUDA machine) without an index means :func:`pick_cuda_index`; ``cuda:N`` is kept."""
    import torch

    pref = (preference or "auto").strip().lower()
    if pref == "auto":
        pref = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(pref)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceUnavailableError(
                f"device '{preference}' requested but CUDA is not available; use device: auto or cpu"
            )
        if device.index is None:
            index = pick_cuda_index()
            torch.cuda.set_device(index)  # code that uses "the current device" (autocast checks, caches) agrees
            return torch.device("cuda", index)
        if device.index >= torch.cuda.device_count():
            raise DeviceUnavailableError(
                f"device '{preference}' requested but only {torch.cuda.device_count()} CUDA device(s) exist"
            )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceUnavailableError(
            f"device '{preference}' requested but MPS is not available; use device: auto or cpu"
        )
    return device


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """bf16 on CUDA GPUs that support it, fp16 on older ones, None (full fp32) elsewhere."""
    import torch

    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


@contextlib.contextmanager
def inference_context(device: torch.device) -> Iterator[None]:
    """``torch.inference_mode`` plus autocast where :func:`autocast_dtype` gives a dtype."""
    import torch

    dtype = autocast_dtype(device)
    with torch.inference_mode():
        if dtype is None:
            yield
        else:
            with torch.autocast(device_type=device.type, dtype=dtype):
                yield
