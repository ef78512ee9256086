"""Snakemake adapter: the fold's gene table from its training sections (every model of the fold uses it)."""

from slidesnake.joblog import setup_job_logging
from slidesnake.models.expression.data import write_gene_table
from slidesnake.models.expression.fold import fold_genes

setup_job_logging(snakemake.log[0])
p = snakemake.params
sections = dict(zip(p.samples, snakemake.input))
table = fold_genes(
    sections, p.samples[int(snakemake.wildcards.fold)], p.genes, p.n_hvg, p.n_heg, p.markers, p.target_sum
)
write_gene_table(table, snakemake.output[0])
