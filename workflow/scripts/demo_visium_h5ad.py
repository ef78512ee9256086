"""Snakemake adapter: a synthetic section's Space Ranger folder -> results/{cohort}/visium/{sample}.h5ad."""

from slidesnake.data.visium import find_visium_files, read_visium, write_h5ad
from slidesnake.joblog import setup_job_logging

setup_job_logging(snakemake.log[0])
sample = snakemake.wildcards.sample
write_h5ad(read_visium(find_visium_files(snakemake.input[0]), sample), snakemake.output[0])
