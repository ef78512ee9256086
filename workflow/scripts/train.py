"""Snakemake adapter (rule train): one (task, model, encoder, fold) training run."""

from pathlib import Path

import pandas as pd

from slidesnake.features.bags import read_bag_index
from slidesnake.joblog import setup_job_logging
from slidesnake.tasks import job_task_labels
from slidesnake.train.loop import TrainParams, train_fold

setup_job_logging(snakemake.log[0])
task, labels = job_task_labels(snakemake)
bags = read_bag_index(snakemake.input.bags)
train_fold(
    task,
    snakemake.wildcards.model,
    bags.features(snakemake.params.magnification),
    labels,
    pd.read_csv(snakemake.input.folds, dtype={"slide_id": str, "case_id": str}),
    int(snakemake.wildcards.fold),
    TrainParams(**snakemake.params.train, num_threads=snakemake.threads),
    str(Path(snakemake.output.model).parent),
    hierarchy=bags.hierarchy() or None,
    first_stage=snakemake.input.get("first_stage"),
    text_encoder=snakemake.params.text_encoder or None,
    hier_prompts=snakemake.input.get("hier_prompts"),
)
