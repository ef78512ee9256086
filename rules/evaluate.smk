"""Metrics per (task, model, encoder): per fold, mean ± std, bootstrap 95% CI; and the comparison table."""

EVALUATION = config["evaluation"]


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
        unit=EVALUATION["unit"],
    log:
        "results/logs/{cohort}/evaluate/{task}/{model}/{encoder}.log",
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow/scripts/evaluate.py"


EVALUATED = [(task, model, TRAIN_ENCODER) for task in TASKS for model in TRAIN["models"]]


rule summary:
    input:
        [f"results/{{cohort}}/eval/{task}/{model}/{encoder}/metrics.csv" for task, model, encoder in EVALUATED],
    output:
        report(
            "results/{cohort}/eval/summary.csv",
            category="Evaluation",
            subcategory="Comparison",
            caption="../resources/report/summary.rst",
        ),
    params:
        evaluated=EVALUATED,
    log:
        "results/logs/{cohort}/summary.log",
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow/scripts/summary.py"


rule curves:
    input:
        fold_predictions,
    output:
        report(
            "results/{cohort}/eval/{task}/{model}/{encoder}/curves.png",
            category="Evaluation",
            subcategory="{task}",
            caption="../resources/report/curves.rst",
            labels={"task": "{task}", "model": "{model}", "encoder": "{encoder}", "figure": "curves"},
        ),
    params:
        task=task_config,
    log:
        "results/logs/{cohort}/curves/{task}/{model}/{encoder}.log",
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow/scripts/curves.py"


rule heatmaps:
    input:
        unpack(heatmap_inputs),
    output:
        # full-size PNGs; the report holds JPEG copies of a bounded choice (rule report_heatmaps)
        directory("results/{cohort}/heatmaps/{task}/{model}/{encoder}/fold{fold}"),
    params:
        magnification=TRAIN["magnification"],
        top_k=8,
        device=TRAIN["device"],
        mpp_fallback=config["mpp_fallback"],
    threads: 2
    resources:
        mem_mb=4000,
        runtime=60,
    log:
        "results/logs/{cohort}/heatmaps/{task}/{model}/{encoder}/fold{fold}.log",
    benchmark:
        "results/benchmarks/{cohort}/heatmaps/{task}/{model}/{encoder}/fold{fold}.tsv"
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow/scripts/heatmaps.py"


rule descriptions:
    input:
        unpack(description_inputs),
    output:
        report(
            "results/{cohort}/eval/{task}/{model}/{encoder}/descriptions.csv",
            category="Evaluation",
            subcategory="{task}",
            caption="../resources/report/descriptions.rst",
            labels={"task": "{task}", "model": "{model}", "encoder": "{encoder}", "table": "descriptions"},
        ),
    params:
        folds=description_folds,
        top=2,
    log:
        "results/logs/{cohort}/descriptions/{task}/{model}/{encoder}.log",
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow/scripts/descriptions.py"
