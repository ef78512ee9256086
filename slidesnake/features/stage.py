"""The feature stage of one slide as one pipeline job: every magnification, every encoder, the hierarchy.

Each encoder is loaded once per job (not once per magnification), each magnification's patches are
read once for all encoders, and the 5x→20x hierarchy is linked as soon as both feature files exist.
One job per slide also keeps a 10,000-slide DAG small enough for Snakemake to plan quickly.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence

from slidesnake.device import select_device
from slidesnake.features.encoders import load_encoder
from slidesnake.features.extract import extract_features
from slidesnake.hierarchy import link_files

log = logging.getLogger(__name__)


def run_feature_stage(
    slide_path: str | os.PathLike,
    coords_h5: Mapping[int, str | os.PathLike],
    encoders: Sequence[str],
    features_h5: Mapping[tuple[str, int], str | os.PathLike],
    hierarchy_h5: Mapping[str, str | os.PathLike],
    *,
    batch_size: int = 64,
    num_workers: int | str = "auto",
    device: str = "auto",
    fallback_mpp: float | None = None,
    cores: int | None = None,
) -> None:
    """Write ``features_h5[(encoder, mag)]`` for every pair, then ``hierarchy_h5[encoder]`` from its 5x and 20x files."""
    torch_device = select_device(device)
    loaded = [load_encoder(name, torch_device) for name in encoders]
    for mag, coords in coords_h5.items():
        extract_features(
            slide_path,
            coords,
            loaded,
            [features_h5[(name, mag)] for name in encoders],
            batch_size=batch_size,
            num_workers=num_workers,
            device=device,
            fallback_mpp=fallback_mpp,
            cores=cores,
        )
    for name, out in hierarchy_h5.items():
        link_files(features_h5[(name, 5)], features_h5[(name, 20)], out)
