"""Snakemake adapter (rule link_hierarchy): 5x parents with their 16 fixed-slot 20x children."""

from slidesnake.hierarchy import link_files
from slidesnake.joblog import setup_job_logging

setup_job_logging(snakemake.log[0])
link_files(snakemake.input.f5, snakemake.input.f20, snakemake.output[0])
