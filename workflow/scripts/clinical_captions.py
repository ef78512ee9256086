"""Snakemake adapter (rule clinical_captions): one clinical paragraph per case of the sheet."""

from slidesnake.data.captions import write_clinical_captions
from slidesnake.joblog import setup_job_logging

setup_job_logging(snakemake.log[0])
write_clinical_captions(snakemake.input.clinical, snakemake.output[0], snakemake.input.sheet, snakemake.params.fields)
