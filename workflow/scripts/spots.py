"""Snakemake adapter: a section's spot-centred tile coords, and its full-resolution image as OpenSlide reads it."""

import anndata as ad

from slidesnake.joblog import setup_job_logging
from slidesnake.tissue.spots import SpotsError, library, readable_image, write_spot_coords

setup_job_logging(snakemake.log[0])
adata = ad.read_h5ad(snakemake.input.h5ad)
sample, entry = library(adata)
source = entry["metadata"].get("source_image_path")
if not source:
    raise SpotsError(
        f"{snakemake.input.h5ad}: no full-resolution image was found for {sample} in {snakemake.input.source}"
    )
image = readable_image(source, snakemake.output.image, entry.get("pitch_mpp") or 0.5)
write_spot_coords(
    adata,
    image,
    snakemake.output.spots,
    tile_um=snakemake.params.tile_um,
    target_mpp=snakemake.params.target_mpp,
    allow_upsample=snakemake.params.allow_upsample,
)
