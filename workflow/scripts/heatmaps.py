"""Snakemake adapter (rule heatmaps): attention heatmaps of one fold's test slides, from that fold's model."""

from pathlib import Path

from slidesnake.evaluate.heatmaps import test_split_heatmaps
from slidesnake.joblog import setup_job_logging

setup_job_logging(snakemake.log[0])
test_split_heatmaps(
    snakemake.input.model,
    snakemake.input.folds,
    int(snakemake.wildcards.fold),
    dict(zip(snakemake.params.slide_ids, snakemake.input.slides)),
    {Path(p).stem: p for p in snakemake.input.features},
    snakemake.output[0],
    hierarchy={Path(p).stem: p for p in snakemake.input.hierarchy} or None,
    k=snakemake.params.top_k,
    device=snakemake.params.device,
    fallback_mpp=snakemake.params.mpp_fallback,
)
