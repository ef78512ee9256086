"""Report assets: captions live in resources/report/; `snakemake --report` collects every report() output.

The report holds small copies so it opens at 1,000 slides (slidesnake/evaluate/report.py): JPEG copies
(longest side report.image_px) of every slide's QC picture and of a bounded choice of heatmaps
(report.heatmaps), and the metrics and QC tables as HTML pages shown inline. Full-size PNGs and the
CSV/TSV tables stay files under results/. The cohort-level tables are cheap; they run on the submit
host, not as cluster jobs.
"""

REPORT = config["report"]


localrules:
    qc_table,
    summary,
    report_tables,


rule report_qc:
    input:
        per_slide("results/{cohort}/qc/{slide_id}.png"),
    output:
        report(
            directory("results/{cohort}/report/qc"),
            patterns=["{slide_id}.jpg"],
            category="Quality control",
            subcategory="Slides",
            caption="../resources/report/qc_slide.rst",
            labels={"slide": "{slide_id}"},
        ),
    params:
        max_px=REPORT["qc_px"],
        quality=REPORT["jpeg_quality"],
    resources:
        runtime=60,
    log:
        "results/logs/{cohort}/report_qc.log",
    benchmark:
        "results/benchmarks/{cohort}/report_qc.tsv"
    conda:
        "../envs/tissue.yaml"
    script:
        "../workflow/scripts/report_qc.py"


rule report_heatmaps:
    input:
        unpack(report_heatmap_inputs),
    output:
        report(
            directory("results/{cohort}/report/heatmaps/{task}/{model}/{encoder}"),
            patterns=["{slide_id}.{kind}.jpg"],
            category="Heatmaps",
            subcategory="{task} {model}",
            caption="../resources/report/heatmap.rst",
            labels={"slide": "{slide_id}", "figure": "{kind}"},
        ),
    params:
        mode=REPORT["heatmaps"],
        n=REPORT["heatmaps_per_model"],
        max_px=REPORT["image_px"],
        quality=REPORT["jpeg_quality"],
    log:
        "results/logs/{cohort}/report_heatmaps/{task}/{model}/{encoder}.log",
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow/scripts/report_heatmaps.py"


rule report_tables:
    input:
        unpack(report_table_inputs),
    output:
        summary=report(
            "results/{cohort}/report/summary.html",
            category="Evaluation",
            subcategory="Comparison",
            caption="../resources/report/summary.rst",
        ),
        metrics=report(
            "results/{cohort}/report/metrics.html",
            category="Evaluation",
            subcategory="Comparison",
            caption="../resources/report/metrics_all.rst",
        ),
        qc=report(
            "results/{cohort}/report/qc.html",
            category="Quality control",
            subcategory="Cohort",
            caption="../resources/report/qc_table.rst",
        ),
    params:
        evaluated=[list(key) for key in EVALUATED],
    log:
        "results/logs/{cohort}/report_tables.log",
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow/scripts/report_tables.py"
