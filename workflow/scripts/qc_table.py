"""Snakemake adapter (rule qc_table): the cohort QC table (parquet for code, TSV for the report)."""

from pathlib import Path

from slidesnake.io.atomic import write_csv, write_parquet
from slidesnake.joblog import setup_job_logging
from slidesnake.tissue.qc import qc_table

setup_job_logging(snakemake.log[0])
coords_by_slide: dict[str, dict[int, str]] = {}
for path in snakemake.input.coords:
    mag = int(Path(path).parent.name.rstrip("x"))
    coords_by_slide.setdefault(Path(path).stem, {})[mag] = path
rows = [(Path(t).stem, t, coords_by_slide.get(Path(t).stem, {})) for t in snakemake.input.tissue]
table = qc_table(rows)
write_parquet(snakemake.output.parquet, table)
write_csv(snakemake.output.table, table, sep="\t")
