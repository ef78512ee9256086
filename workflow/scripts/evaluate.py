"""Snakemake adapter (rule evaluate): test metrics per fold, mean ± std and bootstrap CIs."""

from slidesnake.evaluate.metrics import evaluate_predictions
from slidesnake.io.atomic import write_csv
from slidesnake.joblog import setup_job_logging
from slidesnake.tasks import task_from_config

setup_job_logging(snakemake.log[0])
task = task_from_config(snakemake.wildcards.task, snakemake.params.task)
metrics = evaluate_predictions(
    task,
    list(snakemake.input),
    n_bootstrap=snakemake.params.bootstrap,
    seed=snakemake.params.seed,
    unit=snakemake.params.unit,
)
write_csv(snakemake.output[0], metrics)
