"""Tissue segmentation, patch grids at each magnification, and QC (DESIGN §3)."""


rule segment:
    input:
        slide=slide_path,
    output:
        "results/{cohort}/tissue/{slide_id}.json",
    params:
        preset=config["segmentation"]["preset"],
        overrides=config["segmentation"]["params"],
        mpp_fallback=config["mpp_fallback"],
    log:
        "results/logs/{cohort}/segment/{slide_id}.log",
    benchmark:
        "results/benchmarks/{cohort}/segment/{slide_id}.tsv"
    conda:
        "../envs/tissue.yaml"
    group:
        "slide"
    script:
        "../workflow/scripts/segment.py"


rule patch:
    input:
        slide=slide_path,
        tissue="results/{cohort}/tissue/{slide_id}.json",
    output:
        "results/{cohort}/patches/{mag}x/{slide_id}.h5",
    params:
        patch_size=config["patching"]["patch_size"],
        min_tissue_fraction=config["patching"]["min_tissue_fraction"],
        allow_upsample=config["patching"]["allow_upsample"],
        mpp_fallback=config["mpp_fallback"],
    log:
        "results/logs/{cohort}/patch/{mag}x/{slide_id}.log",
    benchmark:
        "results/benchmarks/{cohort}/patch/{mag}x/{slide_id}.tsv"
    conda:
        "../envs/tissue.yaml"
    group:
        "slide"
    script:
        "../workflow/scripts/patch.py"


rule qc_slide:
    input:
        slide=slide_path,
        tissue="results/{cohort}/tissue/{slide_id}.json",
        coords=expand("results/{{cohort}}/patches/{mag}x/{{slide_id}}.h5", mag=min(MAGS)),
    output:
        report(
            "results/{cohort}/qc/{slide_id}.png",
            category="Quality control",
            subcategory="Slides",
            caption="../resources/report/qc_slide.rst",
            labels={"slide": "{slide_id}"},
        ),
    log:
        "results/logs/{cohort}/qc_slide/{slide_id}.log",
    conda:
        "../envs/tissue.yaml"
    group:
        "slide"
    script:
        "../workflow/scripts/qc_slide.py"


rule qc_table:
    input:
        tissue=per_slide("results/{cohort}/tissue/{slide_id}.json"),
        coords=per_slide("results/{cohort}/patches/{mag}x/{slide_id}.h5", mag=MAGS),
    output:
        parquet="results/{cohort}/qc.parquet",
        table=report(
            "results/{cohort}/qc.tsv",
            category="Quality control",
            subcategory="Cohort",
            caption="../resources/report/qc_table.rst",
        ),
    params:
        mags=MAGS,
    log:
        "results/logs/{cohort}/qc_table.log",
    conda:
        "../envs/tissue.yaml"
    script:
        "../workflow/scripts/qc_table.py"
