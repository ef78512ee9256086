"""Snakemake adapter (rule retrieval_comparison): base vs tuned retrieval metrics side by side."""

from slidesnake.evaluate.retrieval import comparison_table
from slidesnake.io.atomic import write_csv
from slidesnake.joblog import setup_job_logging

setup_job_logging(snakemake.log[0])
write_csv(snakemake.output[0], comparison_table(list(snakemake.input)))
