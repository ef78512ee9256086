"""Snakemake adapter (rule extract_features): one read of a slide's patches feeds every configured encoder."""

from slidesnake.features.extract import extract_features
from slidesnake.joblog import setup_job_logging

setup_job_logging(snakemake.log[0])
extract_features(
    snakemake.input.slide,
    snakemake.input.coords,
    snakemake.params.encoders,
    list(snakemake.output),
    batch_size=snakemake.params.batch_size,
    num_workers=snakemake.params.num_workers,
    device=snakemake.params.device,
    fallback_mpp=snakemake.params.mpp_fallback,
)
