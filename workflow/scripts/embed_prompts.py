"""Snakemake adapter (rule embed_prompts): text-tower embeddings of a prompt set."""

from slidesnake.features.text import embed_prompts
from slidesnake.joblog import setup_job_logging

setup_job_logging(snakemake.log[0])
embed_prompts(snakemake.params.encoder, snakemake.input.prompts, snakemake.output[0], device=snakemake.params.device)
