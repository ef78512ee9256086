"""Snakemake adapter (rule qc_slide): the QC picture of one slide."""

from slidesnake.joblog import setup_job_logging
from slidesnake.tissue.patching import read_coords
from slidesnake.tissue.qc import render_qc
from slidesnake.tissue.segmentation import read_tissue

setup_job_logging(snakemake.log[0])
coords, attrs = read_coords(snakemake.input.coords[0])
render_qc(
    snakemake.input.slide,
    read_tissue(snakemake.input.tissue),
    coords,
    snakemake.output[0],
    patch_size_level0_5x=attrs.get("patch_size_level0"),
)
