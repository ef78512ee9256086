"""Snakemake adapter (rule demo_slide): render one slide of the synthetic demo cohort."""

from slidesnake.data.demo import DemoConfig, write_demo_slide
from slidesnake.joblog import setup_job_logging

setup_job_logging(snakemake.log[0])
write_demo_slide(DemoConfig(**snakemake.params.demo), snakemake.wildcards.slide_id, snakemake.output[0])
