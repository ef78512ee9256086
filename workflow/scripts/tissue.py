"""Snakemake adapter (rule tissue): segment one slide, patch it at each magnification, draw its QC picture."""

from slidesnake.joblog import setup_job_logging
from slidesnake.tissue.segmentation import params_from_config
from slidesnake.tissue.stage import run_tissue_stage

setup_job_logging(snakemake.log[0])
run_tissue_stage(
    snakemake.input.slide,
    snakemake.wildcards.slide_id,
    params_from_config(snakemake.params.preset, snakemake.params.overrides),
    snakemake.output.tissue,
    dict(zip(snakemake.params.mags, snakemake.output.coords)),
    snakemake.output.qc,
    patch_size=snakemake.params.patch_size,
    min_tissue_fraction=snakemake.params.min_tissue_fraction,
    allow_upsample=snakemake.params.allow_upsample,
    fallback_mpp=snakemake.params.mpp_fallback,
    tissue_geojson=snakemake.output.geojson,
)
