"""Snakemake adapter: train one expression model on a leave-one-section-out fold and predict the held-out section."""

import torch

from slidesnake.device import select_device
from slidesnake.joblog import setup_job_logging
from slidesnake.models.expression.contrastive import ContrastiveConfig
from slidesnake.models.expression.fold import Section, run_fold

setup_job_logging(snakemake.log[0])
torch.set_num_threads(snakemake.threads)
p = snakemake.params
ex = p.expression
tiles = list(snakemake.input.get("tiles", [])) or [None] * len(p.samples)
sections = [
    Section(name, h5ad, spots, feats, tile)
    for name, h5ad, spots, feats, tile in zip(
        p.samples, snakemake.input.h5ad, snakemake.input.spots, snakemake.input.features, tiles
    )
]
cfg = ContrastiveConfig(**{k: ex[k] for k in ContrastiveConfig.__dataclass_fields__ if k in ex and k != "num_workers"})
run_fold(
    sections,
    p.samples[int(snakemake.wildcards.fold)],
    snakemake.input.genes,
    snakemake.wildcards.model,
    p.encoder,
    snakemake.output.predictions.rsplit("/", 1)[0],
    cfg,
    target_sum=ex.get("target_sum"),
    harmony=ex.get("harmony", False),
    pca_dim=ex.get("pca_dim", 256),
    device=str(select_device(ex.get("device", "auto"))),
)
