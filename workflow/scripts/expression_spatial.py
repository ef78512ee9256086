"""Snakemake adapter: measured vs every model's predicted expression of marker genes on the held-out section."""

import anndata as ad

from slidesnake.evaluate.expression import plot_genes, spatial_figure
from slidesnake.joblog import setup_job_logging

setup_job_logging(snakemake.log[0])
p = snakemake.params
measured = ad.read_h5ad(snakemake.input.measured[0])
predictions = {m: ad.read_h5ad(f) for m, f in zip(p.models, snakemake.input.predictions)}
genes = plot_genes(measured, p.markers, p.n_genes)
title = f"{p.samples[int(snakemake.wildcards.fold)]} held out ({snakemake.wildcards.encoder})"
spatial_figure(measured, predictions, genes, snakemake.output[0], title=title)
