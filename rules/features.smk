"""Patch features for every configured encoder, and text embeddings of configured prompts.

One job reads a slide's patches once per magnification and feeds every encoder (DESIGN §3).
"""

FEATURES = config["features"]


rule extract_features:
    input:
        slide=slide_path,
        coords="results/{cohort}/patches/{mag}x/{slide_id}.h5",
    output:
        expand(
            "results/{{cohort}}/features/{encoder}/{{mag}}x/{{slide_id}}.h5",
            encoder=list(ENCODERS),
        ),
    params:
        encoders=list(ENCODERS.values()),
        batch_size=FEATURES["batch_size"],
        num_workers=FEATURES["num_workers"],
        device=FEATURES["device"],
        mpp_fallback=config["mpp_fallback"],
    threads: max(1, FEATURES["num_workers"])
    resources:
        gpu=FEATURES["gpu"],
        mem_mb=FEATURES["mem_mb"],
    log:
        "results/logs/{cohort}/extract_features/{mag}x/{slide_id}.log",
    benchmark:
        "results/benchmarks/{cohort}/extract_features/{mag}x/{slide_id}.tsv"
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow/scripts/extract_features.py"


rule embed_prompts:
    input:
        prompts=prompt_file,
    output:
        "results/{cohort}/text/{encoder}/{prompts}.h5",
    params:
        encoder=encoder_name,
        device=FEATURES["device"],
    resources:
        gpu=FEATURES["gpu"],
    log:
        "results/logs/{cohort}/embed_prompts/{encoder}/{prompts}.log",
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow/scripts/embed_prompts.py"
