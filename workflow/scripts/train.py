"""Snakemake adapter (rule train): one (task, model, encoder, fold) training run."""

from pathlib import Path

import pandas as pd

from slidesnake.joblog import setup_job_logging
from slidesnake.train.loop import TrainParams, train_fold
from slidesnake.train.tasks import load_task_labels

setup_job_logging(snakemake.log[0])
task, labels = load_task_labels(
    snakemake.wildcards.task,
    snakemake.params.task,
    snakemake.input.sheet,
    clinical=snakemake.input.get("clinical"),
    mutations=snakemake.input.get("mutations"),
)
train_fold(
    task,
    snakemake.wildcards.model,
    {Path(p).stem: p for p in snakemake.input.features},
    labels,
    pd.read_csv(snakemake.input.folds, dtype={"slide_id": str, "case_id": str}),
    int(snakemake.wildcards.fold),
    TrainParams(**snakemake.params.train, num_threads=snakemake.threads),
    str(Path(snakemake.output.model).parent),
    hierarchy={Path(p).stem: p for p in snakemake.input.hierarchy} or None,
)
