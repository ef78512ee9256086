"""Snakemake adapter (rule cplip_align): CPLIP-style MIL-NCE alignment of an encoder on one fold's train patients."""

from pathlib import Path

from slidesnake.joblog import setup_job_logging
from slidesnake.train.contrastive import align_prompt_bags_files

setup_job_logging(snakemake.log[0])
align_prompt_bags_files(
    snakemake.params.base,
    snakemake.input.dictionary,
    (snakemake.params.task_name, snakemake.params.task),
    snakemake.input.sheet,
    list(snakemake.input.coords),
    list(snakemake.input.slides),
    snakemake.input.folds,
    str(Path(snakemake.output[0]).parent),
    dict(snakemake.params.cplip),
    name=snakemake.params.name,
    clinical=snakemake.input.get("clinical"),
    mutations=snakemake.input.get("mutations"),
    fallback_mpp=snakemake.params.mpp_fallback,
)
