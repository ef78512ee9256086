"""Device selection and the inference settings that go with it (autocast dtype, memory format).

Kept apart from the extractor so the text-embedding and training code pick devices the same way:
CUDA when present and asked for, the CPU otherwise, and full precision on the CPU so CPU results
are exact references for tests.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from slidesnake.errors import InputError


class DeviceUnavailableError(InputError, RuntimeError):
    """A specific device was requested (``cuda``, ``mps``) but this machine has none."""


def select_device(preference: str = "auto") -> torch.device:
    """``auto`` -> ``cuda`` when available, else ``cpu``; an explicit device must exist."""
    pref = (preference or "auto").strip().lower()
    if pref == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(pref)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceUnavailableError(
                f"device '{preference}' requested but CUDA is not available; use device: auto or cpu"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
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
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


@contextlib.contextmanager
def inference_context(device: torch.device) -> Iterator[None]:
    """``torch.inference_mode`` plus autocast where :func:`autocast_dtype` gives a dtype."""
    dtype = autocast_dtype(device)
    with torch.inference_mode():
        if dtype is None:
            yield
        else:
            with torch.autocast(device_type=device.type, dtype=dtype):
                yield
