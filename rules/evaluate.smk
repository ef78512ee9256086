"""Metrics per (task, model, encoder): per fold, mean ± std, bootstrap 95% CI; and the comparison table."""

EVALUATION = config["evaluation"]
REPORT_DESCRIPTION_SLIDES = 4  # test slides in the descriptions figure: those the model is most confident about


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


rule evaluate_fewshot:
    """Metrics of one few-shot curve point: per repeat, mean ± std and pooled, per patient."""
    input:
        fewshot_fold_predictions,
    output:
        "results/{cohort}/eval/{task}/{model}/{encoder}/fewshot{shots}/metrics.csv",
    params:
        task=task_config,
        bootstrap=EVALUATION["bootstrap"],
        seed=EVALUATION["seed"],
        unit=EVALUATION["unit"],
    log:
        "results/logs/{cohort}/evaluate/{task}/{model}/{encoder}/fewshot{shots}.log",
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow/scripts/evaluate.py"


rule fewshot_curve:
    """The few-shot curve of a task: metrics against N per model, and zero-shot on the same test patients."""
    input:
        unpack(fewshot_curve_inputs),
    output:
        table=report(
            "results/{cohort}/eval/{task}/fewshot_curve.csv",
            category="Evaluation",
            subcategory="Few-shot",
            caption="../resources/report/fewshot_curve.rst",
            labels={"task": "{task}", "table": "few-shot curve"},
        ),
        figure=report(
            "results/{cohort}/eval/{task}/fewshot_curve.png",
            category="Evaluation",
            subcategory="Few-shot",
            caption="../resources/report/fewshot_curve.rst",
            labels={"task": "{task}", "figure": "few-shot curve"},
        ),
    params:
        task=task_config,
        points=[(m, n) for m in CURVE_MODELS for n in sorted(CURVE["shots"])],
        zeroshot=curve_zeroshot(),
        encoder=TRAIN_ENCODER,
        bootstrap=EVALUATION["bootstrap"],
        seed=EVALUATION["seed"],
    log:
        "results/logs/{cohort}/fewshot_curve/{task}.log",
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow/scripts/fewshot_curve.py"


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
        table=report(
            "results/{cohort}/eval/{task}/{model}/{encoder}/descriptions.csv",
            category="Evaluation",
            subcategory="{task}",
            caption="../resources/report/descriptions.rst",
            labels={"task": "{task}", "model": "{model}", "encoder": "{encoder}", "table": "descriptions"},
        ),
        figure=report(
            "results/{cohort}/eval/{task}/{model}/{encoder}/descriptions.png",
            category="Evaluation",
            subcategory="{task}",
            caption="../resources/report/descriptions_figure.rst",
            labels={"task": "{task}", "model": "{model}", "encoder": "{encoder}", "figure": "descriptions"},
        ),
    params:
        folds=description_folds,
        top=2,
        figure_slides=REPORT_DESCRIPTION_SLIDES,
    log:
        "results/logs/{cohort}/descriptions/{task}/{model}/{encoder}.log",
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow/scripts/descriptions.py"
