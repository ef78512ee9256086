"""Snakemake adapter (rule retrieval): HLIP retrieval metrics and malignancy maps of one encoder on test patients."""

from slidesnake.evaluate.retrieval import RetrievalParams, run_retrieval
from slidesnake.joblog import setup_job_logging

setup_job_logging(snakemake.log[0])
params = {k: tuple(v) if isinstance(v, list) else v for k, v in snakemake.params.retrieval.items()}
run_retrieval(
    snakemake.params.encoder,
    list(snakemake.input.features),
    snakemake.input.captions,
    snakemake.input.clinical,
    snakemake.input.folds,
    snakemake.input.sheet,
    snakemake.params.fold,
    snakemake.output.metrics,
    snakemake.output.maps,
    snakemake.output.figure,
    text_h5=snakemake.input.get("text"),
    task=(snakemake.params.task_name, dict(snakemake.params.task)),
    params=RetrievalParams(**params),
    device=snakemake.params.device,
)
