"""Snakemake adapter (rule features): features of one slide for every encoder and magnification, and its hierarchy."""

from itertools import product

from slidesnake.features.stage import run_feature_stage
from slidesnake.joblog import setup_job_logging

setup_job_logging(snakemake.log[0])
encoders, mags = snakemake.params.encoders, snakemake.params.mags
run_feature_stage(
    snakemake.input.slide,
    dict(zip(mags, snakemake.input.coords)),
    encoders,
    dict(zip(product(encoders, mags), snakemake.output.features)),  # expand() order: encoder, then mag
    dict(zip(encoders, snakemake.output.hierarchy)),
    batch_size=snakemake.params.batch_size,
    num_workers=snakemake.params.num_workers,
    device=snakemake.params.device,
    fallback_mpp=snakemake.params.mpp_fallback,
    cores=snakemake.threads,
)
