"""Report assets: captions live in resources/report/; `snakemake --report` collects every report() output."""

localrules:
    demo_cohort,
    qc_table,
    summary,
