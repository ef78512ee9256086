# Download stage: GDC slides, clinical and mutation tables; GEO / spatialLIBD Visium samples.
# Tunables reach jobs through params:. The GDC token never does: only the NAME of its file or
# environment variable is passed, and the library reads the secret at request time.

_DL_GDC = config.get("gdc", {})
_DL_GEO = config.get("geo", {})
_DL_COHORT = config.get("cohort", "cohort")


checkpoint gdc_query:
    output:
        sheet="results/{cohort}/slides.tsv",
        manifest="results/{cohort}/gdc_manifest.txt",
    log:
        "results/logs/{cohort}/gdc_query/gdc_query.log",
    params:
        api=_DL_GDC.get("api"),
        projects=_DL_GDC.get("projects"),
        strategy=_DL_GDC.get("strategy"),
        data_format=_DL_GDC.get("data_format"),
        label=_DL_GDC.get("label"),
        retries=_DL_GDC.get("retries"),
        timeout_s=_DL_GDC.get("timeout_s"),
    conda:
        "../envs/download.yaml"
    script:
        "../workflow/scripts/gdc_query.py"


rule gdc_download_slide:
    input:
        # ancient: re-running the query must not re-download slides that are already verified
        sheet=ancient("results/{cohort}/slides.tsv"),
    output:
        "resources/slides/{cohort}/{slide_id}.svs",
    log:
        "results/logs/{cohort}/gdc_download_slide/{slide_id}.log",
    benchmark:
        "results/benchmarks/{cohort}/gdc_download_slide/{slide_id}.tsv"
    params:
        api=_DL_GDC.get("api"),
        retries=_DL_GDC.get("retries"),
        timeout_s=_DL_GDC.get("timeout_s"),
        token_file=_DL_GDC.get("token_file"),
        token_env=_DL_GDC.get("token_env"),
    resources:
        runtime=240,
        # one unit per transfer: `--resources gdc_downloads=N` (set in the profiles) caps parallel downloads
        gdc_downloads=1,
    conda:
        "../envs/download.yaml"
    script:
        "../workflow/scripts/gdc_download.py"


rule gdc_clinical:
    output:
        "results/{cohort}/clinical.parquet",
    log:
        "results/logs/{cohort}/gdc_clinical/gdc_clinical.log",
    params:
        api=_DL_GDC.get("api"),
        projects=_DL_GDC.get("projects"),
        retries=_DL_GDC.get("retries"),
        timeout_s=_DL_GDC.get("timeout_s"),
    conda:
        "../envs/download.yaml"
    script:
        "../workflow/scripts/gdc_clinical.py"


rule gdc_mutations:
    output:
        "results/{cohort}/mutations.parquet",
    log:
        "results/logs/{cohort}/gdc_mutations/gdc_mutations.log",
    benchmark:
        "results/benchmarks/{cohort}/gdc_mutations/gdc_mutations.tsv"
    params:
        api=_DL_GDC.get("api"),
        projects=_DL_GDC.get("projects"),
        genes=_DL_GDC.get("genes"),
        capture_mb=_DL_GDC.get("capture_mb"),
        cache_dir="resources/gdc/{cohort}/maf",
        parallel=_DL_GDC.get("parallel"),
        retries=_DL_GDC.get("retries"),
        timeout_s=_DL_GDC.get("timeout_s"),
    conda:
        "../envs/download.yaml"
    script:
        "../workflow/scripts/gdc_mutations.py"


rule geo_download:
    output:
        directory("resources/geo/{series}"),
    log:
        f"results/logs/{_DL_COHORT}/geo_download/{{series}}.log",
    benchmark:
        f"results/benchmarks/{_DL_COHORT}/geo_download/{{series}}.tsv"
    params:
        base_url=_DL_GEO.get("base_url"),
        samples=_DL_GEO.get("samples"),
        layout=_DL_GEO.get("layout"),
        pattern=_DL_GEO.get("pattern"),
        positions_url=_DL_GEO.get("positions_url"),
        parallel=_DL_GEO.get("parallel"),
        retries=_DL_GEO.get("retries"),
        timeout_s=_DL_GEO.get("timeout_s"),
    resources:
        runtime=480,
    conda:
        "../envs/download.yaml"
    script:
        "../workflow/scripts/geo_download.py"


rule visium_h5ad:
    input:
        f"resources/geo/{_DL_GEO.get('series')}",
    output:
        "results/{cohort}/visium/{sample}.h5ad",
    log:
        "results/logs/{cohort}/visium_h5ad/{sample}.log",
    conda:
        "../envs/download.yaml"
    script:
        "../workflow/scripts/visium_h5ad.py"
