"""Snakemake adapter (rule pretrain_demo_clip): pretrain demo-clip on the caption corpus, write its open_clip folder."""

from pathlib import Path

from slidesnake.joblog import setup_job_logging
from slidesnake.train.contrastive import ContrastiveParams, pretrain_clip

setup_job_logging(snakemake.log[0])
train = dict(snakemake.params.train)
batch_size = train.pop("batch_size")
pretrain_clip(
    snakemake.input.train,
    snakemake.input.val,
    str(Path(snakemake.output[0]).parent),
    name="demo-clip",
    batch_size=batch_size,
    params=ContrastiveParams(**train, patience=max(3, train["epochs"])),
    threads=snakemake.threads,
)
