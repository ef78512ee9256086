"""The embedded synthetic demo cohort: slides, sheet, clinical and mutation tables (fully offline)."""


localrules:
    demo_cohort,


rule demo_slide:
    output:
        "resources/slides/{cohort}/{slide_id}.svs",
    params:
        demo=sorted_keys(config["demo"]),
    resources:
        mem_mb=1000,
    log:
        "results/logs/{cohort}/demo_slide/{slide_id}.log",
    benchmark:
        "results/benchmarks/{cohort}/demo_slide/{slide_id}.tsv"
    conda:
        "../envs/tissue.yaml"
    group:
        "slide"
    script:
        "../workflow/scripts/demo_slide.py"


rule demo_cohort:
    output:
        sheet="results/{cohort}/slides.tsv",
        clinical="results/{cohort}/clinical.parquet",
        mutations="results/{cohort}/mutations.parquet",
    params:
        demo=sorted_keys(config["demo"]),
        slide_dir=slides_dir(),
    log:
        "results/logs/{cohort}/demo_cohort.log",
    conda:
        "../envs/tissue.yaml"
    script:
        "../workflow/scripts/demo_cohort.py"
