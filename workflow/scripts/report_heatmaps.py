"""Snakemake adapter (rule report_heatmaps): JPEG copies of the report's choice of one task-model's heatmaps."""

from slidesnake.evaluate.report import report_slides, write_report_heatmaps
from slidesnake.joblog import setup_job_logging

setup_job_logging(snakemake.log[0])
chosen = report_slides(list(snakemake.input.predictions), snakemake.params.mode, snakemake.params.n)
write_report_heatmaps(
    dict(enumerate(snakemake.input.heatmaps)),
    chosen,
    snakemake.output[0],
    max_px=snakemake.params.max_px,
    quality=snakemake.params.quality,
)
