"""Snakemake adapter: masked somatic MAFs -> mutations.parquet (wide, with TMB)."""

from slidesnake.data.gdc import GdcClient
from slidesnake.data.maf import MutationParams, fetch_mutation_table
from slidesnake.data.transfer import TransferConfig
from slidesnake.io.atomic import write_parquet
from slidesnake.joblog import setup_job_logging

setup_job_logging(snakemake.log[0])
p = snakemake.params
table = fetch_mutation_table(
    GdcClient(p.api, timeout_s=p.timeout_s, retries=p.retries),
    p.projects,
    p.cache_dir,
    MutationParams(genes=p.genes, capture_mb=p.capture_mb),
    TransferConfig(retries=p.retries, timeout_s=p.timeout_s, parallel=p.parallel),
)
write_parquet(snakemake.output[0], table)
