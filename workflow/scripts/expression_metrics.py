"""Snakemake adapter: metrics of one fold's predictions against the measured held-out section."""

from slidesnake.evaluate.expression import compare_files
from slidesnake.joblog import setup_job_logging

setup_job_logging(snakemake.log[0])
compare_files(
    snakemake.input.predictions,
    snakemake.input.measured,
    snakemake.output.metrics,
    genes_csv=snakemake.output.genes,
    markers=snakemake.params.markers,
)
