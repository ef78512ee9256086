"""Snakemake adapter (rule caption_corpus): one split of the synthetic caption corpus demo-clip pretrains on."""

from slidesnake.data.captions_corpus import CorpusConfig, write_corpus
from slidesnake.joblog import setup_job_logging

setup_job_logging(snakemake.log[0])
write_corpus(CorpusConfig(**snakemake.params.corpus), snakemake.wildcards.split, snakemake.output[0])
