"""Spatial expression: Visium sections -> spot tiles -> spot features -> BLEEP / HECLIP / HEST ridge,
leave-one-section-out (fold k holds out the k-th section of the cohort's sample list) -> metrics,
summary and spatial figures of predicted vs measured marker genes.
"""

_EX = config.get("expression", {})
_DV = config.get("demo_visium", {})


if SOURCE == "demo_visium":

    rule demo_visium_section:
        output:
            directory("resources/visium/{cohort}/{sample}"),
        params:
            demo=sorted_keys(_DV),
        log:
            "results/logs/{cohort}/demo_visium_section/{sample}.log",
        benchmark:
            "results/benchmarks/{cohort}/demo_visium_section/{sample}.tsv"
        conda:
            "../envs/tissue.yaml"
        script:
            "../workflow/scripts/demo_visium_section.py"

    rule demo_visium_h5ad:
        input:
            "resources/visium/{cohort}/{sample}",
        output:
            "results/{cohort}/visium/{sample}.h5ad",
        log:
            "results/logs/{cohort}/demo_visium_h5ad/{sample}.log",
        conda:
            "../envs/download.yaml"
        script:
            "../workflow/scripts/demo_visium_h5ad.py"


rule spots:
    input:
        h5ad="results/{cohort}/visium/{sample}.h5ad",
        source=visium_source,
    output:
        spots="results/{cohort}/patches/spots/{sample}.h5",
        image="results/{cohort}/visium/images/{sample}.tif",
    params:
        tile_um=_EX.get("tile_um"),
        target_mpp=_EX.get("target_mpp"),
        allow_upsample=config["patching"]["allow_upsample"],
    log:
        "results/logs/{cohort}/spots/{sample}.log",
    benchmark:
        "results/benchmarks/{cohort}/spots/{sample}.tsv"
    conda:
        "../envs/tissue.yaml"
    script:
        "../workflow/scripts/spots.py"


rule spot_features:
    input:
        spots="results/{cohort}/patches/spots/{sample}.h5",
        image="results/{cohort}/visium/images/{sample}.tif",
        trained=features_trained_encoders,
    output:
        expand("results/{{cohort}}/features/{encoder}/spots/{{sample}}.h5", encoder=list(ENCODERS)),
    params:
        encoders=encoder_sources(),
        batch_size=FEATURES["batch_size"],
        num_workers=FEATURES["num_workers"],
        device=FEATURES["device"],
    threads: FEATURES["threads"]
    resources:
        gpu=FEATURES["gpu"],
        mem_mb=FEATURES["mem_mb"],
    log:
        "results/logs/{cohort}/spot_features/{sample}.log",
    benchmark:
        "results/benchmarks/{cohort}/spot_features/{sample}.tsv"
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow/scripts/spot_features.py"


rule spot_tiles:
    input:
        spots="results/{cohort}/patches/spots/{sample}.h5",
        image="results/{cohort}/visium/images/{sample}.tif",
    output:
        "results/{cohort}/tiles/spots/{sample}.h5",
    log:
        "results/logs/{cohort}/spot_tiles/{sample}.log",
    benchmark:
        "results/benchmarks/{cohort}/spot_tiles/{sample}.tsv"
    conda:
        "../envs/tissue.yaml"
    script:
        "../workflow/scripts/spot_tiles.py"


rule expression_genes:
    input:
        expand("results/{{cohort}}/visium/{sample}.h5ad", sample=VISIUM_SAMPLES),
    output:
        "results/{cohort}/expression/genes/fold{fold}.tsv",
    params:
        samples=VISIUM_SAMPLES,
        genes=_EX.get("genes"),
        n_hvg=_EX.get("n_hvg"),
        n_heg=_EX.get("n_heg"),
        markers=_EX.get("markers"),
        target_sum=_EX.get("target_sum"),
    log:
        "results/logs/{cohort}/expression_genes/fold{fold}.log",
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow/scripts/expression_genes.py"


rule expression_fold:
    input:
        unpack(expression_fold_inputs),
    output:
        predictions="results/{cohort}/expression/{model}/{encoder}/fold{fold}/predictions.h5ad",
        measured="results/{cohort}/expression/{model}/{encoder}/fold{fold}/measured.h5ad",
        model="results/{cohort}/expression/{model}/{encoder}/fold{fold}/model.pt",
        history="results/{cohort}/expression/{model}/{encoder}/fold{fold}/history.csv",
    wildcard_constraints:
        model="bleep|heclip|ridge",
    params:
        samples=VISIUM_SAMPLES,
        encoder=text_encoder_source,
        expression=sorted_keys(_EX),
    threads: _EX.get("threads", 2)
    resources:
        gpu=_EX.get("gpu", 0),
    log:
        "results/logs/{cohort}/expression_fold/{model}/{encoder}/fold{fold}.log",
    benchmark:
        "results/benchmarks/{cohort}/expression_fold/{model}/{encoder}/fold{fold}.tsv"
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow/scripts/expression_fold.py"


rule expression_metrics:
    input:
        predictions="results/{cohort}/expression/{model}/{encoder}/fold{fold}/predictions.h5ad",
        measured="results/{cohort}/expression/{model}/{encoder}/fold{fold}/measured.h5ad",
    output:
        metrics="results/{cohort}/eval/expression/{model}/{encoder}/fold{fold}/metrics.csv",
        genes="results/{cohort}/eval/expression/{model}/{encoder}/fold{fold}/genes.csv",
    wildcard_constraints:
        model="bleep|heclip|ridge",
    params:
        markers=_EX.get("markers"),
    log:
        "results/logs/{cohort}/expression_metrics/{model}/{encoder}/fold{fold}.log",
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow/scripts/expression_metrics.py"


rule expression_summary:
    input:
        expression_metric_files,
    output:
        summary=report(
            "results/{cohort}/eval/expression/summary.csv",
            category="Spatial expression",
            caption="../resources/report/expression_summary.rst",
        ),
    log:
        "results/logs/{cohort}/expression_summary/summary.log",
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow/scripts/expression_summary.py"


rule expression_spatial:
    input:
        unpack(expression_fold_predictions),
    output:
        report(
            "results/{cohort}/eval/expression/spatial/{encoder}/fold{fold}.png",
            category="Spatial expression",
            subcategory="{encoder}",
            caption="../resources/report/expression_spatial.rst",
        ),
    params:
        models=_EX.get("models"),
        markers=_EX.get("markers"),
        n_genes=_EX.get("plot_genes"),
        samples=VISIUM_SAMPLES,
    log:
        "results/logs/{cohort}/expression_spatial/{encoder}/fold{fold}.log",
    benchmark:
        "results/benchmarks/{cohort}/expression_spatial/{encoder}/fold{fold}.tsv"
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow/scripts/expression_spatial.py"
