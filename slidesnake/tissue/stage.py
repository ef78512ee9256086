"""The tissue stage of one slide as one pipeline job: segment, patch every magnification, draw QC.

Segmentation (~0.3 s), patching (milliseconds) and the QC picture are cheap and always run in
sequence, so one Snakemake job does all three: that keeps the job count per slide low enough for
Snakemake to plan a 10,000-slide cohort in well under a minute (DESIGN §4), while every product
stays its own cached file with the DESIGN §2 contract.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

from slidesnake.io.atomic import write_json
from slidesnake.tissue.geojson import write_tissue_geojson
from slidesnake.tissue.patching import patch_slide, read_coords
from slidesnake.tissue.qc import render_qc
from slidesnake.tissue.segmentation import STATUS_OK, SegmentationParams, segment_slide

log = logging.getLogger(__name__)


def run_tissue_stage(
    slide_path: str | os.PathLike,
    slide_id: str,
    params: SegmentationParams,
    tissue_json: str | os.PathLike,
    coords_h5: Mapping[int, str | os.PathLike],
    qc_png: str | os.PathLike,
    *,
    patch_size: int = 256,
    min_tissue_fraction: float = 0.0,
    allow_upsample: bool = False,
    fallback_mpp: float | None = None,
    tissue_geojson: str | os.PathLike | None = None,
) -> dict:
    """Write the tissue JSON (and its GeoJSON twin), one coords h5 per magnification and the QC PNG;
    returns the tissue record.

    A bad slide never raises: its status goes into every file and the QC picture shows it.
    """
    record = segment_slide(slide_path, params, fallback_mpp=fallback_mpp, slide_id=slide_id)
    write_json(tissue_json, record)
    if tissue_geojson is not None:
        write_tissue_geojson(tissue_geojson, record)
    for mag, out in coords_h5.items():
        patch_slide(
            record,
            float(mag),
            out,
            patch_size=patch_size,
            min_tissue_fraction=min_tissue_fraction,
            allow_upsample=allow_upsample,
            fallback_mpp=fallback_mpp,
        )
    qc_mag = min(coords_h5)
    coords, attrs = read_coords(coords_h5[qc_mag])
    render_qc(slide_path, record, coords, qc_png, patch_size_level0_5x=attrs.get("patch_size_level0") or None)
    if record["status"] != STATUS_OK:
        log.warning("%s (%s): %s", slide_id, slide_path, record["status"])
    return record
