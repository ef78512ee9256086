"""Snakemake adapter (rule splits): patient-level stratified k-fold train/val/test splits for one task."""

from slidesnake.io.atomic import write_csv
from slidesnake.joblog import setup_job_logging
from slidesnake.tasks import job_task_labels
from slidesnake.train.splits import make_splits

setup_job_logging(snakemake.log[0])
_, labels = job_task_labels(snakemake)
folds = make_splits(
    labels, k=snakemake.params.folds, val_fraction=snakemake.params.val_fraction, seed=snakemake.params.seed
)
write_csv(snakemake.output[0], folds)
