"""Tissue segmentation, patch grids at each magnification, and QC (DESIGN §3), one job per slide.

Segmenting, patching and drawing QC are cheap and sequential, so one job does them (see
slidesnake/tissue/stage.py); each product is still its own cached file.
"""


rule tissue:
    input:
        slide=slide_path,
    output:
        tissue="results/{cohort}/tissue/{slide_id}.json",
        geojson="results/{cohort}/tissue/{slide_id}.geojson",
        coords=expand("results/{{cohort}}/patches/{mag}x/{{slide_id}}.h5", mag=MAGS),
        qc="results/{cohort}/qc/{slide_id}.png",  # full size; the report shows a JPEG copy (rule report_qc)
    params:
        mags=MAGS,
        preset=config["segmentation"]["preset"],
        overrides=sorted_keys(config["segmentation"]["params"]),
        patch_size=config["patching"]["patch_size"],
        min_tissue_fraction=config["patching"]["min_tissue_fraction"],
        allow_upsample=config["patching"]["allow_upsample"],
        mpp_fallback=config["mpp_fallback"],
    resources:
        mem_mb=2000,
    log:
        "results/logs/{cohort}/tissue/{slide_id}.log",
    benchmark:
        "results/benchmarks/{cohort}/tissue/{slide_id}.tsv"
    conda:
        "../envs/tissue.yaml"
    group:
        "slide"
    script:
        "../workflow/scripts/tissue.py"


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
    log:
        "results/logs/{cohort}/qc_table.log",
    conda:
        "../envs/tissue.yaml"
    script:
        "../workflow/scripts/qc_table.py"
