"""Snakemake adapter (rule heatmaps): attention heatmaps of one fold's test slides, from that fold's model."""

import torch

from slidesnake.evaluate.heatmaps import test_split_heatmaps
from slidesnake.features.bags import read_bag_index
from slidesnake.joblog import setup_job_logging

setup_job_logging(snakemake.log[0])
torch.set_num_threads(snakemake.threads)
bags = read_bag_index(snakemake.input.bags)
test_split_heatmaps(
    snakemake.input.model,
    snakemake.input.folds,
    int(snakemake.wildcards.fold),
    bags.slides(),
    bags.features(snakemake.params.magnification),
    snakemake.output[0],
    hierarchy=bags.hierarchy() or None,
    k=snakemake.params.top_k,
    device=snakemake.params.device,
    fallback_mpp=snakemake.params.mpp_fallback,
)
