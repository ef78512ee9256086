"""Snakemake adapter: query GDC slide files -> slide sheet + gdc-client manifest."""

from slidesnake.data.cohorts import LabelRule
from slidesnake.data.gdc import GdcClient, SlideQuery, query_slides, slide_sheet, write_manifest, write_sheet
from slidesnake.joblog import setup_job_logging

setup_job_logging(snakemake.log[0])
p = snakemake.params
client = GdcClient(p.api, timeout_s=p.timeout_s, retries=p.retries)
hits = query_slides(client, SlideQuery(projects=p.projects, strategy=p.strategy, data_format=p.data_format))
sheet = slide_sheet(hits, snakemake.wildcards.cohort, LabelRule.from_config(p.label))
write_sheet(sheet, snakemake.output.sheet)
write_manifest(sheet, snakemake.output.manifest)
