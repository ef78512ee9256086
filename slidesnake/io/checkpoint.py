"""model.pt: the trained weights and what they were trained on (DESIGN §2), written atomically.

A checkpoint records the model name, the encoder and magnification of its features, the classes, the
task and the training params, so whoever loads it (heatmaps, a second-stage model) can refuse
features or a model it does not belong to instead of producing a quietly wrong map.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from typing import Any

import torch

from slidesnake.errors import InputError
from slidesnake.io.atomic import atomic_path

FORMAT_VERSION = 1
REQUIRED = ("state_dict", "model", "in_dim", "n_outputs", "model_kwargs", "task", "classes", "params")
# keys a loader may check against what it is about to combine the model with
CHECKED = ("model", "encoder", "magnification", "in_dim")


class CheckpointError(InputError):
    """A model.pt that cannot be read, lacks a recorded key, or does not match what it is used with."""


def save_checkpoint(path: str | os.PathLike, record: Mapping[str, Any]) -> None:
    """Write ``record`` (the keys of :data:`REQUIRED` plus encoder, magnification, ...) to ``path`` atomically."""
    missing = [key for key in REQUIRED if key not in record]
    if missing:
        raise CheckpointError(f"{path}: checkpoint record lacks {missing}")
    record = {**record, "format_version": FORMAT_VERSION}
    record["state_dict"] = {k: v.detach().cpu() for k, v in record["state_dict"].items()}
    with atomic_path(path) as tmp:
        torch.save(record, tmp)


def load_checkpoint(path: str | os.PathLike, expect: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Read a model.pt (weights only, on the CPU) and check it against ``expect``.

    ``expect`` maps keys of :data:`CHECKED` to the values the caller needs (e.g. the encoder and
    magnification recorded in the features it will score); a value unknown on either side is not checked. A mismatch
    raises :class:`CheckpointError` naming the file, the key, both values and the fix.
    """
    try:
        record = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise CheckpointError(f"{path}: not a readable model checkpoint ({reason}); rerun the train rule") from exc
    missing = [key for key in REQUIRED if key not in record]
    if missing:
        raise CheckpointError(f"{path}: not a slidesnake model.pt (lacks {missing}); rerun the train rule")
    for key, wanted in (expect or {}).items():
        if key not in CHECKED:
            raise ValueError(f"cannot check checkpoint key {key!r}; checkable keys: {CHECKED}")
        recorded = record.get(key)
        if wanted is None or recorded is None:  # unknown on either side (features without the attr): no check
            continue
        if not _same(recorded, wanted):
            raise CheckpointError(
                f"{path} was trained with {key}={recorded!r} but is used with {key}={wanted!r}; "
                f"use the {key} the model was trained on (or retrain it for this one)"
            )
    return record


def _same(a: Any, b: Any) -> bool:
    try:
        return float(a) == float(b)
    except (TypeError, ValueError):
        return str(a) == str(b)
