"""Snakemake adapter: a GEO series' (or spatialLIBD samples') files -> resources/geo/{series}/."""

from slidesnake.data.geo import SPATIALLIBD_POSITIONS, download_series
from slidesnake.data.transfer import TransferConfig
from slidesnake.joblog import setup_job_logging

setup_job_logging(snakemake.log[0])
p = snakemake.params
download_series(
    snakemake.wildcards.series,
    snakemake.output[0],
    base_url=p.base_url,
    samples=[str(s) for s in p.samples or []],
    pattern=p.pattern,
    layout=p.layout or "geo",
    positions_url=p.positions_url or SPATIALLIBD_POSITIONS,
    config=TransferConfig(retries=p.retries, timeout_s=p.timeout_s, parallel=p.parallel),
)
