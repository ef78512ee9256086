"""HLIP (issue 14, DESIGN §3): clinical captions, tile samples, clinical-text tuning of an encoder
('hlip-<base>', a pipeline-trained encoder whose features the features rule extracts like any other),
and retrieval evaluation of the base and the tuned encoder side by side on test patients."""


rule clinical_captions:
    input:
        clinical="results/{cohort}/clinical.parquet",
        sheet=sheet_file(),
    output:
        "results/{cohort}/captions/clinical.parquet",
    params:
        fields=HLIP["fields"],
    log:
        "results/logs/{cohort}/clinical_captions.log",
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow/scripts/clinical_captions.py"


rule tiles:
    input:
        slide=slide_path,
        coords="results/{cohort}/patches/{mag}x/{slide_id}.h5",
    output:
        "results/{cohort}/tiles/{mag}x/{slide_id}.h5",
    params:
        tiles_per_slide=HLIP["tiles_per_slide"],
        seed=HLIP["seed"],
        mpp_fallback=config["mpp_fallback"],
    resources:
        mem_mb=1000,
    log:
        "results/logs/{cohort}/tiles/{mag}x/{slide_id}.log",
    benchmark:
        "results/benchmarks/{cohort}/tiles/{mag}x/{slide_id}.tsv"
    conda:
        "../envs/tissue.yaml"
    group:
        "slide"
    script:
        "../workflow/scripts/sample_tiles.py"


rule hlip_tune:
    input:
        unpack(hlip_tune_inputs),
    output:
        expand("results/{{cohort}}/encoders/{name}/{file}", name=HLIP_NAME, file=ENCODER_FILES),
    params:
        base=encoder_source(HLIP["base"]),
        name=HLIP_NAME,
        fold=HLIP["fold"],
        batch_size=HLIP["batch_size"],
        num_workers=HLIP["num_workers"],
        sentence_prob=HLIP["sentence_prob"],
        wise_alpha=HLIP["wise_alpha"],
        survival_bins=HLIP["survival_bins"],
        train={key: HLIP[key] for key in ("device", "epochs", "lr", "max_seconds", "patience", "seed")},
    threads: HLIP["threads"]
    resources:
        gpu=FEATURES["gpu"],
    log:
        "results/logs/{cohort}/hlip_tune.log",
    benchmark:
        "results/benchmarks/{cohort}/hlip_tune.tsv"
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow/scripts/hlip_tune.py"


rule retrieval:
    input:
        unpack(retrieval_inputs),
    output:
        metrics="results/{cohort}/eval/retrieval/{encoder}/metrics.csv",
        maps="results/{cohort}/eval/retrieval/{encoder}/maps.h5",
        figure=report(
            "results/{cohort}/eval/retrieval/{encoder}/maps.png",
            category="Evaluation",
            subcategory="HLIP malignancy maps",
        ),
    params:
        encoder=text_encoder_source,
        fold=HLIP["fold"],
        task=sorted_keys(TASKS[HLIP_TASK]) if HLIP_TASK else {},
        task_name=HLIP_TASK,
        retrieval={key: HLIP[key] for key in ("f1_ks", "recall_ks", "repeats", "seed", "survival_bins", "threshold")},
        device=FEATURES["device"],
    threads: 2
    log:
        "results/logs/{cohort}/retrieval/{encoder}.log",
    benchmark:
        "results/benchmarks/{cohort}/retrieval/{encoder}.tsv"
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow/scripts/retrieval.py"


rule retrieval_comparison:
    input:
        expand("results/{{cohort}}/eval/retrieval/{encoder}/metrics.csv", encoder=HLIP_ENCODERS),
    output:
        report(
            "results/{cohort}/eval/retrieval/comparison.csv",
            category="Evaluation",
            subcategory="Vision-language",
        ),
    log:
        "results/logs/{cohort}/retrieval_comparison.log",
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow/scripts/retrieval_comparison.py"
