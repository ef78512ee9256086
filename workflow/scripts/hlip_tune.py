"""Snakemake adapter (rule hlip_tune): tune an encoder's towers on (tile, clinical caption) pairs of train patients."""

from pathlib import Path

from slidesnake.joblog import setup_job_logging
from slidesnake.train.contrastive import hlip_params, tune_hlip_files

setup_job_logging(snakemake.log[0])
tune_hlip_files(
    snakemake.params.base,
    list(snakemake.input.tiles),
    snakemake.input.captions,
    snakemake.input.folds,
    snakemake.input.sheet,
    snakemake.params.fold,
    str(Path(snakemake.output[0]).parent),
    name=snakemake.params.name,
    batch_size=snakemake.params.batch_size,
    num_workers=snakemake.params.num_workers,
    sentence_prob=snakemake.params.sentence_prob,
    wise_alpha=snakemake.params.wise_alpha,
    survival_edges=list(snakemake.params.survival_bins),
    params=hlip_params(**snakemake.params.train),
    threads=snakemake.threads,
)
