"""Snakemake adapter (rule tiles): a fixed-seed sample of at most K tiles of one slide, pixels at the target mpp."""

from slidesnake.features.tiles import sample_tiles
from slidesnake.joblog import setup_job_logging

setup_job_logging(snakemake.log[0])
sample_tiles(
    snakemake.input.slide,
    snakemake.input.coords,
    snakemake.output[0],
    slide_id=snakemake.wildcards.slide_id,
    magnification=int(snakemake.wildcards.mag),
    tiles_per_slide=snakemake.params.tiles_per_slide,
    seed=snakemake.params.seed,
    fallback_mpp=snakemake.params.mpp_fallback,
)
