"""Snakemake adapter: download one slide of the sheet (resumable, md5-verified)."""

from slidesnake.data.gdc import download_slide, read_sheet
from slidesnake.data.token import read_token
from slidesnake.data.transfer import TransferConfig
from slidesnake.joblog import setup_job_logging

setup_job_logging(snakemake.log[0])
p = snakemake.params
download_slide(
    read_sheet(snakemake.input.sheet),
    snakemake.wildcards.slide_id,
    snakemake.output[0],
    api=p.api,
    config=TransferConfig(retries=p.retries, timeout_s=p.timeout_s),
    token=read_token(p.token_file, p.token_env),
)
