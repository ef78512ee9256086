"""Vision-language models (DESIGN §3): the demo's pretrained VLM (demo-clip), zero-shot slide and tile
classification (CONCH / MI-Zero protocol), CPLIP-style prompt-bag alignment, and their comparison.

Pipeline-trained encoders are written as open_clip folders under results/{cohort}/encoders/{name}/ and
are file inputs of every features and text job that uses them (rules/common.smk, trained_encoder_files).
"""

PRETRAIN = VL["pretrain"]


wildcard_constraints:
    prompts=r"[A-Za-z0-9_.-]+",
    split="train|val|test",


rule caption_corpus:
    output:
        "results/{cohort}/captions/{split}.h5",
    params:
        corpus={
            key: PRETRAIN[key]
            for key in ("captions_per_tile", "regions_per_kind", "seed", "tiles_20x_per_region", "tiles_5x_per_region")
        },
    log:
        "results/logs/{cohort}/caption_corpus/{split}.log",
    benchmark:
        "results/benchmarks/{cohort}/caption_corpus/{split}.tsv"
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow/scripts/caption_corpus.py"


rule pretrain_demo_clip:
    input:
        train="results/{cohort}/captions/train.h5",
        val="results/{cohort}/captions/val.h5",
    output:
        expand("results/{{cohort}}/encoders/demo-clip/{file}", file=ENCODER_FILES),
    params:
        train={key: PRETRAIN[key] for key in ("batch_size", "device", "epochs", "lr", "max_seconds", "weight_decay")},
    threads: PRETRAIN["threads"]
    resources:
        gpu=FEATURES["gpu"],
    log:
        "results/logs/{cohort}/pretrain_demo_clip.log",
    benchmark:
        "results/benchmarks/{cohort}/pretrain_demo_clip.tsv"
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow/scripts/pretrain_clip.py"


rule cplip_align:
    input:
        unpack(cplip_inputs),
    output:
        expand("results/{{cohort}}/encoders/{name}/{file}", name=CPLIP_NAME, file=ENCODER_FILES),
    params:
        base=encoder_source(CPLIP["base"]),
        name=CPLIP_NAME,
        task=task_config(SimpleNamespace(task=CPLIP_TASK)) if CPLIP_TASK else {},
        task_name=CPLIP_TASK,
        cplip={key: CPLIP[key] for key in sorted(CPLIP) if key not in ("enabled", "base", "dictionary", "task")},
        mpp_fallback=config["mpp_fallback"],
    threads: 2
    resources:
        gpu=FEATURES["gpu"],
    log:
        "results/logs/{cohort}/cplip_align.log",
    benchmark:
        "results/benchmarks/{cohort}/cplip_align.tsv"
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow/scripts/cplip_align.py"


rule zeroshot:
    input:
        unpack(zeroshot_inputs),
    output:
        predictions="results/{cohort}/models/{task}/zeroshot-{prompts}/{encoder}/predictions.parquet",
        scores="results/{cohort}/models/{task}/zeroshot-{prompts}/{encoder}/scores.parquet",
        tiles="results/{cohort}/models/{task}/zeroshot-{prompts}/{encoder}/tile_scores.h5",
    params:
        task=task_config,
        zeroshot={key: ZS[key] for key in ("ks", "magnification", "n_prompt_sets", "seed", "smoothing_k", "top_k")},
        only_fold=zeroshot_only_fold,
    log:
        "results/logs/{cohort}/zeroshot/{task}/{prompts}/{encoder}.log",
    benchmark:
        "results/benchmarks/{cohort}/zeroshot/{task}/{prompts}/{encoder}.tsv"
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow/scripts/zeroshot.py"


ruleorder: evaluate_zeroshot > evaluate


rule evaluate_zeroshot:
    input:
        predictions="results/{cohort}/models/{task}/zeroshot-{prompts}/{encoder}/predictions.parquet",
        scores="results/{cohort}/models/{task}/zeroshot-{prompts}/{encoder}/scores.parquet",
        sheet=sheet_file(),
    output:
        metrics="results/{cohort}/eval/{task}/zeroshot-{prompts}/{encoder}/metrics.csv",
        sweep="results/{cohort}/eval/{task}/zeroshot-{prompts}/{encoder}/sweep.csv",
    params:
        task=task_config,
        bootstrap=EVALUATION["bootstrap"],
        seed=EVALUATION["seed"],
    log:
        "results/logs/{cohort}/evaluate_zeroshot/{task}/{prompts}/{encoder}.log",
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow/scripts/evaluate_zeroshot.py"


rule zeroshot_tiles:
    input:
        unpack(zeroshot_tile_inputs),
    output:
        "results/{cohort}/eval/{task}/zeroshot-{prompts}/{encoder}/tiles.csv",
    params:
        encoder=text_encoder_source,
        magnifications=MAGS,
        bootstrap=EVALUATION["bootstrap"],
        seed=EVALUATION["seed"],
        device=FEATURES["device"],
    log:
        "results/logs/{cohort}/zeroshot_tiles/{task}/{prompts}/{encoder}.log",
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow/scripts/zeroshot_tiles.py"


rule vl_comparison:
    input:
        unpack(vl_comparison_inputs),
    output:
        report(
            "results/{cohort}/eval/vl_comparison.csv",
            category="Evaluation",
            subcategory="Vision-language",
            caption="../resources/report/vl_comparison.rst",
        ),
    params:
        rows=[(t, f"zeroshot-{p}", e) for t in ZS_TASKS for p in ZS["prompts"] for e in ZS_ENCODERS],
        supervised=[(t, m, TRAIN_ENCODER) for t in ZS_TASKS for m in TRAIN["models"]],
        folds=[len(model_folds(m)) for t in ZS_TASKS for m in TRAIN["models"]],  # runs per supervised row
        bootstrap=EVALUATION["bootstrap"],
        seed=EVALUATION["seed"],
    log:
        "results/logs/{cohort}/vl_comparison.log",
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow/scripts/vl_comparison.py"
