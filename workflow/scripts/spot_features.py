"""Snakemake adapter: spot-tile features of one section for every configured encoder (one read)."""

import h5py

from slidesnake.features.extract import extract_features
from slidesnake.joblog import setup_job_logging

setup_job_logging(snakemake.log[0])
with h5py.File(snakemake.input.spots, "r") as f:
    mpp = float(f.attrs["positions_mpp"])
extract_features(
    snakemake.input.image,
    snakemake.input.spots,
    snakemake.params.encoders,
    list(snakemake.output),
    batch_size=snakemake.params.batch_size,
    num_workers=snakemake.params.num_workers,
    device=snakemake.params.device,
    fallback_mpp=mpp,
    cores=snakemake.threads,
)
