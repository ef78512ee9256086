"""The bag index of one (cohort, encoder): a table with one row per slide naming its slide file, its
features file and instance count per magnification, and its 5x→20x hierarchy file.

Training and heatmap jobs read this one small table instead of declaring every slide's feature files
as their own Snakemake inputs. With one training job per (task, model, fold), per-job inputs make
the DAG grow as slides × jobs (a 13-model, 5-fold comparison on 10,000 slides: 650,000 input
edges); through the index it grows as slides + jobs, and a changed features file still reruns the
index and so every job that reads it. Building the index also checks, once per cohort, that every
file of one magnification has the same feature dimension.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py
import pandas as pd

from slidesnake.errors import InputError
from slidesnake.io.atomic import write_csv


class BagIndexError(InputError):
    """Feature files that cannot form one cohort's bags (mixed dimensions, missing datasets)."""


@dataclass(frozen=True)
class BagIndex:
    """Paths per slide, read back from a bag index TSV."""

    table: pd.DataFrame

    def features(self, mag: int) -> dict[str, str]:
        """slide_id → features h5 at ``mag``x."""
        column = f"features_{mag}x"
        if column not in self.table:
            raise BagIndexError(f"the bag index has no {mag}x features (columns: {list(self.table.columns)})")
        return self._column(column)

    def hierarchy(self) -> dict[str, str]:
        """slide_id → hierarchy h5; empty when the cohort is patched at one magnification only."""
        if "hierarchy" not in self.table:
            return {}
        return self._column("hierarchy")

    def slides(self) -> dict[str, str]:
        """slide_id → the slide file the features were read from."""
        return self._column("slide")

    def _column(self, column: str) -> dict[str, str]:
        """slide_id → the column's path, leaving out slides without one."""
        return {slide_id: path for slide_id, path in zip(self.table["slide_id"], self.table[column]) if path}


def write_bag_index(
    features: Mapping[int, Sequence[str]],
    hierarchy: Sequence[str],
    out: str | os.PathLike,
) -> pd.DataFrame:
    """Index the features files (per magnification, one per slide, named ``{slide_id}.h5``) and the
    hierarchy files of one encoder into ``out`` (TSV, written atomically)."""
    columns: dict[str, dict[str, object]] = {}
    slides: dict[str, str] = {}
    for mag, paths in sorted(features.items()):
        dims: dict[int, str] = {}
        files, counts = {}, {}
        for path in paths:
            slide_id = Path(path).stem
            with h5py.File(path, "r") as f:
                if "features" not in f:
                    raise BagIndexError(f"{path} has no 'features' dataset; rerun its features job")
                shape = f["features"].shape
                slides.setdefault(slide_id, str(f.attrs.get("slide", "")))
            dims.setdefault(int(shape[-1]), path)
            files[slide_id], counts[slide_id] = os.fspath(path), int(shape[0])
        if len(dims) > 1:
            examples = ", ".join(f"D={dim} in {path}" for dim, path in dims.items())
            raise BagIndexError(
                f"{mag}x features of one encoder have different dimensions ({examples}); "
                "rerun the features jobs of the odd files"
            )
        columns[f"features_{mag}x"], columns[f"n_{mag}x"] = files, counts
    if hierarchy:
        columns["hierarchy"] = {Path(path).stem: os.fspath(path) for path in hierarchy}
    table = pd.DataFrame(columns)
    table.insert(0, "slide", pd.Series(slides))
    table = table.rename_axis("slide_id").reset_index().sort_values("slide_id", ignore_index=True)
    write_csv(out, table, sep="\t")
    return table


def read_bag_index(path: str | os.PathLike) -> BagIndex:
    """Read a bag index TSV written by :func:`write_bag_index`."""
    return BagIndex(pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False))
