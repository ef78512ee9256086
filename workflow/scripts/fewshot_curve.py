"""Snakemake adapter (rule fewshot_curve): metrics against N per model, zero-shot on the same test patients."""

import pandas as pd

from slidesnake.evaluate.fewshot import curve_figure, curve_table, zeroshot_repeat_metrics
from slidesnake.io.atomic import write_csv
from slidesnake.joblog import setup_job_logging
from slidesnake.tasks import task_from_config

setup_job_logging(snakemake.log[0])
task = task_from_config(snakemake.wildcards.task, snakemake.params.task)
trained = [(model, shots, path) for (model, shots), path in zip(snakemake.params.points, snakemake.input.metrics)]
zeroshot = []
if snakemake.params.zeroshot:
    splits = pd.read_csv(snakemake.input.splits, dtype={"slide_id": str, "case_id": str})
    scores = pd.read_parquet(snakemake.input.zeroshot)
    metrics = zeroshot_repeat_metrics(task, scores, splits, snakemake.params.bootstrap, snakemake.params.seed)
    zeroshot.append((snakemake.params.zeroshot, metrics))
table = curve_table(trained, zeroshot).assign(task=task.name, encoder=snakemake.params.encoder)
write_csv(snakemake.output.table, table)
curve_figure(table, snakemake.output.figure, title=f"{task.name}: few-shot curve ({snakemake.params.encoder})")
