"""Snakemake adapter (rule vl_comparison): zero-shot (per encoder) vs supervised models, per patient, with CIs."""

from itertools import accumulate

from slidesnake.evaluate.vl import comparison_table
from slidesnake.io.atomic import write_csv
from slidesnake.joblog import setup_job_logging

setup_job_logging(snakemake.log[0])
rows = snakemake.params.rows
tiles = snakemake.input.get("tiles") or [None] * len(rows)
zeroshot = [(*key, path, tile) for key, path, tile in zip(rows, snakemake.input.predictions, tiles)]
# each supervised row's runs (k folds, or few-shot repeats), in input order
ends = list(accumulate(snakemake.params.folds))
supervised_files = list(snakemake.input.supervised)
supervised = [
    (*key, supervised_files[end - n : end])
    for key, n, end in zip(snakemake.params.supervised, snakemake.params.folds, ends)
]
write_csv(
    snakemake.output[0],
    comparison_table(zeroshot, supervised, n_bootstrap=snakemake.params.bootstrap, seed=snakemake.params.seed),
)
