"""Report assets: captions live in resources/report/; `snakemake --report` collects every report() output.

The cohort-level tables the report shows are cheap; they run on the submit host, not as cluster jobs.
"""


localrules:
    qc_table,
    summary,
