"""Snakemake adapter (rule report_qc): JPEG copies of every slide's QC picture for the report."""

from slidesnake.evaluate.report import write_report_qc
from slidesnake.joblog import setup_job_logging

setup_job_logging(snakemake.log[0])
write_report_qc(list(snakemake.input), snakemake.output[0], max_px=snakemake.params.max_px,
                quality=snakemake.params.quality)  # fmt: skip
