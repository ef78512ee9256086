"""Snakemake adapter (rule descriptions): per test slide, the descriptions a HiVE-MIL prediction rests on."""

from slidesnake.evaluate.descriptions import describe, description_figure
from slidesnake.features.bags import read_bag_index
from slidesnake.io.atomic import write_csv
from slidesnake.joblog import setup_job_logging

setup_job_logging(snakemake.log[0])
table, scores = describe(
    dict(zip(snakemake.params.folds, snakemake.input.models)),
    snakemake.input.folds,
    read_bag_index(snakemake.input.bags).hierarchy(),
    top=snakemake.params.top,
)
write_csv(snakemake.output.table, table)
description_figure(table, scores, snakemake.output.figure, n_slides=snakemake.params.figure_slides)
