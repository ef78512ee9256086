"""Snakemake adapter (rule demo_cohort): the demo's slide sheet, clinical and mutation tables."""

from slidesnake.data.demo import DemoConfig, write_demo_tables
from slidesnake.joblog import setup_job_logging

setup_job_logging(snakemake.log[0])
write_demo_tables(
    DemoConfig(**snakemake.params.demo),
    snakemake.output.sheet,
    snakemake.output.clinical,
    snakemake.output.mutations,
    slide_dir=snakemake.params.slide_dir,
)
