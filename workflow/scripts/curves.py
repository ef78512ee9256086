"""Snakemake adapter (rule curves): ROC curves (classification, mutations) or Kaplan–Meier curves (survival)."""

from slidesnake.evaluate.figures import km_figure, roc_figure
from slidesnake.joblog import setup_job_logging
from slidesnake.tasks import task_from_config

setup_job_logging(snakemake.log[0])
task = task_from_config(snakemake.wildcards.task, snakemake.params.task)
draw = km_figure if task.kind == "survival" else roc_figure
draw(list(snakemake.input), task, snakemake.output[0])
