"""Metrics per (task, model, encoder): per fold, mean ± std, bootstrap 95% CI; and the comparison table."""

EVALUATION = config["evaluation"]


def fold_predictions(wildcards):
    return expand(
        "results/{cohort}/models/{task}/{model}/{encoder}/fold{fold}/predictions.parquet",
        cohort=COHORT,
        task=wildcards.task,
        model=wildcards.model,
        encoder=wildcards.encoder,
        fold=range(TRAIN["folds"]),
    )


rule evaluate:
    input:
        fold_predictions,
    output:
        report(
            "results/{cohort}/eval/{task}/{model}/{encoder}/metrics.csv",
            category="Evaluation",
            subcategory="{task}",
            caption="../resources/report/metrics.rst",
            labels={"task": "{task}", "model": "{model}", "encoder": "{encoder}"},
        ),
    params:
        task=task_config,
        bootstrap=EVALUATION["bootstrap"],
        seed=EVALUATION["seed"],
    log:
        "results/logs/{cohort}/evaluate/{task}/{model}/{encoder}.log",
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow/scripts/evaluate.py"


rule summary:
    input:
        expand(
            "results/{{cohort}}/eval/{task}/{model}/{encoder}/metrics.csv",
            task=list(TASKS),
            model=TRAIN["models"],
            encoder=TRAIN_ENCODER,
        ),
    output:
        report(
            "results/{cohort}/eval/summary.csv",
            category="Evaluation",
            subcategory="Comparison",
            caption="../resources/report/summary.rst",
        ),
    log:
        "results/logs/{cohort}/summary.log",
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow/scripts/summary.py"
