"""Snakemake adapter (rule descriptions): per test slide, the descriptions a HiVE-MIL prediction rests on."""

from slidesnake.evaluate.descriptions import description_table
from slidesnake.features.bags import read_bag_index
from slidesnake.io.atomic import write_csv
from slidesnake.joblog import setup_job_logging

setup_job_logging(snakemake.log[0])
table = description_table(
    dict(zip(snakemake.params.folds, snakemake.input.models)),
    snakemake.input.folds,
    read_bag_index(snakemake.input.bags).hierarchy(),
    top=snakemake.params.top,
)
write_csv(snakemake.output[0], table)
