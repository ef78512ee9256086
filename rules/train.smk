"""Patient-level splits (k folds; few-shot N per class x repeats) and one training job per (task, model,
encoder, fold); a few-shot model's fold is its repeat (DESIGN §3)."""

rule splits:
    input:
        unpack(split_inputs),
    output:
        "results/{cohort}/splits/{task}/folds.csv",
    params:
        task=task_config,
        folds=TRAIN["folds"],
        val_fraction=TRAIN["val_fraction"],
        seed=TRAIN["split_seed"],
    log:
        "results/logs/{cohort}/splits/{task}.log",
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow/scripts/make_splits.py"


rule fewshot_splits:
    input:
        unpack(split_inputs),
    output:
        "results/{cohort}/splits/{task}/fewshot{shots}.csv",
    params:
        task=task_config,
        repeats=FEWSHOT["repeats"],
        val_fraction=FEWSHOT["val_fraction"],
        test_fraction=FEWSHOT["test_fraction"],
        seed=TRAIN["split_seed"],
    log:
        "results/logs/{cohort}/splits/{task}.fewshot{shots}.log",
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow/scripts/make_fewshot_splits.py"


rule train:
    input:
        unpack(train_inputs),
    output:
        model="results/{cohort}/models/{task}/{model}/{encoder}/fold{fold}/model.pt",
        history="results/{cohort}/models/{task}/{model}/{encoder}/fold{fold}/history.csv",
        predictions="results/{cohort}/models/{task}/{model}/{encoder}/fold{fold}/predictions.parquet",
    params:
        task=task_config,
        magnification=TRAIN["magnification"],
        train=train_params,
        text_encoder=train_text_encoder,
    threads: 1
    resources:
        gpu=TRAIN["gpu"],
    log:
        "results/logs/{cohort}/train/{task}/{model}/{encoder}/fold{fold}.log",
    benchmark:
        "results/benchmarks/{cohort}/train/{task}/{model}/{encoder}/fold{fold}.tsv"
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow/scripts/train.py"


rule train_fewshot:
    """One point of the few-shot curve (training.fewshot.curve): a model trained on fewshot{shots}.csv, one
    run per repeat (fold = repeat), with the train rule's script and parameters."""
    input:
        unpack(fewshot_train_inputs),
    output:
        model="results/{cohort}/models/{task}/{model}/{encoder}/fewshot{shots}/fold{fold}/model.pt",
        history="results/{cohort}/models/{task}/{model}/{encoder}/fewshot{shots}/fold{fold}/history.csv",
        predictions="results/{cohort}/models/{task}/{model}/{encoder}/fewshot{shots}/fold{fold}/predictions.parquet",
    params:
        task=task_config,
        magnification=TRAIN["magnification"],
        train=train_params,
        text_encoder=train_text_encoder,
    threads: 1
    resources:
        gpu=TRAIN["gpu"],
    log:
        "results/logs/{cohort}/train/{task}/{model}/{encoder}/fewshot{shots}/fold{fold}.log",
    benchmark:
        "results/benchmarks/{cohort}/train/{task}/{model}/{encoder}/fewshot{shots}/fold{fold}.tsv"
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow/scripts/train.py"
