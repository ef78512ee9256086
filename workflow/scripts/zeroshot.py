"""Snakemake adapter (rule zeroshot): zero-shot slide scores of one (task, prompts, encoder) from stored features."""

import pandas as pd

from slidesnake.features.bags import read_bag_index
from slidesnake.io.atomic import write_parquet
from slidesnake.joblog import setup_job_logging
from slidesnake.models.vl.zeroshot import ZeroShotParams, predictions_table, read_text_bank, reorder, score_cohort
from slidesnake.tasks import class_names, job_task_labels

setup_job_logging(snakemake.log[0])
task, labels = job_task_labels(snakemake)
params = dict(snakemake.params.zeroshot)
magnification = params.pop("magnification")
params["ks"] = tuple(params["ks"])
zs = ZeroShotParams(**params)
classes = class_names(task, labels)
bank = reorder(read_text_bank(snakemake.input.text), classes)
features = read_bag_index(snakemake.input.bags).features(magnification)
features = {s: features[s] for s in labels["slide_id"] if s in features}
scores = score_cohort(features, bank, zs, snakemake.output.tiles)
folds = pd.read_csv(snakemake.input.folds, dtype={"slide_id": str, "case_id": str})
write_parquet(snakemake.output.scores, scores)
write_parquet(
    snakemake.output.predictions,
    predictions_table(scores, labels, folds, classes, zs.top_k, snakemake.params.only_fold),
)
