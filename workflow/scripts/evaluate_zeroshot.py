"""Snakemake adapter (rule evaluate_zeroshot): slide metrics per test fold (the trained models' code) and
the per-patient K sweep with the prompt-set spread."""

import pandas as pd

from slidesnake.evaluate.vl import fold_metrics, sweep_table
from slidesnake.io.atomic import write_csv
from slidesnake.joblog import setup_job_logging
from slidesnake.tasks import job_task_labels

setup_job_logging(snakemake.log[0])
task, labels = job_task_labels(snakemake)
predictions = pd.read_parquet(snakemake.input.predictions)
write_csv(snakemake.output.metrics, fold_metrics(task, predictions, snakemake.params.bootstrap, snakemake.params.seed))
scores = pd.read_parquet(snakemake.input.scores)
write_csv(snakemake.output.sweep, sweep_table(scores, labels, slides=predictions["slide_id"].tolist()))
