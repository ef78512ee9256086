"""Snakemake adapter (rule bag_index): one encoder's features and hierarchy files as one table."""

from slidesnake.features.bags import write_bag_index
from slidesnake.joblog import setup_job_logging

setup_job_logging(snakemake.log[0])
write_bag_index(
    {mag: snakemake.input[f"features_{mag}x"] for mag in snakemake.params.mags},
    snakemake.input.get("hierarchy", []),
    snakemake.output[0],
)
