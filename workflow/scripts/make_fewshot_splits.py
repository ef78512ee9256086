"""Snakemake adapter (rule fewshot_splits): N training slides per class x repeats, shared val/test per repeat."""

from slidesnake.io.atomic import write_csv
from slidesnake.joblog import setup_job_logging
from slidesnake.tasks import job_task_labels
from slidesnake.train.splits import make_fewshot_splits

setup_job_logging(snakemake.log[0])
_, labels = job_task_labels(snakemake)
shots = int(snakemake.wildcards.shots)
tables = make_fewshot_splits(
    labels,
    shots,
    repeats=snakemake.params.repeats,
    val_fraction=snakemake.params.val_fraction,
    test_fraction=snakemake.params.test_fraction,
    seed=snakemake.params.seed,
)
write_csv(snakemake.output[0], tables[shots])
