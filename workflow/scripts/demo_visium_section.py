"""Snakemake adapter: one synthetic Visium section (full-res TIFF + Space Ranger outs/) into output[0]."""

from slidesnake.data.demo_visium import DemoVisiumConfig, write_section
from slidesnake.joblog import setup_job_logging

setup_job_logging(snakemake.log[0])
write_section(DemoVisiumConfig(**snakemake.params.demo), snakemake.wildcards.sample, snakemake.output[0])
