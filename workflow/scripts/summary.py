"""Snakemake adapter (rule summary): one comparison table across tasks, models and encoders."""

from slidesnake.evaluate.compare import compare_metrics
from slidesnake.io.atomic import write_csv
from slidesnake.joblog import setup_job_logging

setup_job_logging(snakemake.log[0])
write_csv(
    snakemake.output[0], compare_metrics((*key, path) for key, path in zip(snakemake.params.evaluated, snakemake.input))
)
