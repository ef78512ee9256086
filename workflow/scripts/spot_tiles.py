"""Snakemake adapter: a section's spot tiles (pixels at the target mpp) for tuning image towers."""

from slidesnake.joblog import setup_job_logging
from slidesnake.tissue.spots import write_spot_tiles

setup_job_logging(snakemake.log[0])
write_spot_tiles(snakemake.input.image, snakemake.input.spots, snakemake.output[0])
