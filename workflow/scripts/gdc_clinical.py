"""Snakemake adapter: GDC cases -> clinical.parquet."""

from slidesnake.data.clinical import clinical_table, fetch_cases
from slidesnake.data.gdc import GdcClient
from slidesnake.io.atomic import write_parquet
from slidesnake.joblog import setup_job_logging

setup_job_logging(snakemake.log[0])
p = snakemake.params
client = GdcClient(p.api, timeout_s=p.timeout_s, retries=p.retries)
write_parquet(snakemake.output[0], clinical_table(fetch_cases(client, p.projects)))
