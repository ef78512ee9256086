"""Snakemake adapter: mean ± std over folds of every model x encoder x metric -> eval/expression/summary.csv."""

import re

import pandas as pd

from slidesnake.evaluate.expression import summarize
from slidesnake.io.atomic import write_csv
from slidesnake.joblog import setup_job_logging

setup_job_logging(snakemake.log[0])
frames = {}
for path in snakemake.input:
    model, encoder, fold = re.search(r"expression/([^/]+)/([^/]+)/fold(\d+)/metrics\.csv$", path).groups()
    frames[(model, encoder, int(fold))] = pd.read_csv(path)
write_csv(snakemake.output.summary, summarize(frames))
