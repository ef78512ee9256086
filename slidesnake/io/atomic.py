"""Atomic file writers: write to a temp file in the target folder, then rename.

Snakemake (and a user's ``ls``) must never see half a file: a job killed mid-write
leaves only a ``.tmp-*`` file behind, never a truncated output with a valid name; the next
successful write of that output removes such leftovers (Snakemake runs one job per output, so a
``.tmp-<name>.*`` sibling that is not the current writer's belongs to a killed earlier write).
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import h5py
import numpy as np

if TYPE_CHECKING:  # writers take DataFrames; the module does not import pandas (tissue jobs never load it)
    import pandas as pd

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path beside ``path``; rename it onto ``path`` only if the block succeeds."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{target.name}.", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates 0600; give the output the mode a plain open() would (shared cluster storage)
        os.chmod(tmp_path, 0o666 & ~_UMASK)
        os.replace(tmp_path, target)
        _remove_leftovers(target)
    finally:
        tmp_path.unlink(missing_ok=True)


def _remove_leftovers(target: Path) -> None:
    """Delete the temp files that killed earlier writes of ``target`` left beside it."""
    for stale in target.parent.glob(f".tmp-{glob.escape(target.name)}.*"):
        stale.unlink(missing_ok=True)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=1, default=_json_default) + "\n")


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write a text file atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_parquet(path: str | os.PathLike, df: pd.DataFrame) -> None:
    """Write a DataFrame to parquet (pyarrow), atomically."""
    with atomic_path(path) as tmp:
        df.to_parquet(tmp, engine="pyarrow", index=False)


def write_csv(path: str | os.PathLike, df: pd.DataFrame, **kwargs: Any) -> None:
    """Write a DataFrame to CSV (or TSV with ``sep="\\t"``), atomically."""
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False, **kwargs)


def write_h5(
    path: str | os.PathLike,
    datasets: dict[str, np.ndarray],
    attrs: dict[str, Any] | None = None,
    compression: str | None = None,
    dataset_attrs: dict[str, dict[str, Any]] | None = None,
) -> None:
    """Write named arrays (and root attributes) to an HDF5 file, atomically.

    Empty arrays are written with their full shape so readers see (0, D), not a missing key.
    ``dataset_attrs`` maps a dataset name to attributes written on that dataset (CLAM/TRIDENT read
    their metadata from ``f["coords"].attrs``).
    """
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            for name, arr in datasets.items():
                arr = np.asarray(arr)
                dset = f.create_dataset(name, data=arr, compression=compression if arr.size else None)
                for key, value in ((dataset_attrs or {}).get(name) or {}).items():
                    dset.attrs[key] = "" if value is None else value
            for key, value in (attrs or {}).items():
                f.attrs[key] = "" if value is None else value


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
