"""Snakemake adapter (rule patch): the patch grid of one slide at one magnification."""

from slidesnake.joblog import setup_job_logging
from slidesnake.tissue.patching import patch_slide

setup_job_logging(snakemake.log[0])
patch_slide(
    snakemake.input.tissue,
    float(snakemake.wildcards.mag),
    snakemake.output[0],
    patch_size=snakemake.params.patch_size,
    min_tissue_fraction=snakemake.params.min_tissue_fraction,
    allow_upsample=snakemake.params.allow_upsample,
    fallback_mpp=snakemake.params.mpp_fallback,
)
