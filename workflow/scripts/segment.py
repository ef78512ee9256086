"""Snakemake adapter (rule segment): tissue contours of one slide; a bad slide gets a status, not a crash."""

from slidesnake.io.atomic import write_json
from slidesnake.joblog import setup_job_logging
from slidesnake.tissue.segmentation import params_from_config, segment_slide

setup_job_logging(snakemake.log[0])
params = params_from_config(snakemake.params.preset, snakemake.params.overrides)
record = segment_slide(
    snakemake.input.slide, params, fallback_mpp=snakemake.params.mpp_fallback, slide_id=snakemake.wildcards.slide_id
)
write_json(snakemake.output[0], record)
