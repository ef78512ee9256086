"""Snakemake adapter (rule report_tables): the comparison, metrics and QC tables as HTML for the report."""

import pandas as pd

from slidesnake.evaluate.report import html_table, metrics_table
from slidesnake.joblog import setup_job_logging

setup_job_logging(snakemake.log[0])
html_table(pd.read_csv(snakemake.input.summary), "Comparison (mean ± std over folds)", snakemake.output.summary)
files = dict(zip((tuple(key) for key in snakemake.params.evaluated), snakemake.input.metrics))
html_table(metrics_table(files), "Test metrics per fold, mean, std and 95% CI", snakemake.output.metrics)
html_table(pd.read_csv(snakemake.input.qc, sep="\t"), "Quality control per slide", snakemake.output.qc)
