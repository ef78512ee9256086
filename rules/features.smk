"""Patch features for every configured encoder and magnification, the 5x→20x hierarchy, and text
embeddings of configured prompts.

One job per slide loads each encoder once, reads the slide's patches once per magnification for
all encoders (DESIGN §3), and links the hierarchy (slidesnake/features/stage.py).
"""


rule features:
    input:
        slide=slide_path,
        coords=expand("results/{{cohort}}/patches/{mag}x/{{slide_id}}.h5", mag=MAGS),
        trained=features_trained_encoders,
    output:
        features=expand(
            "results/{{cohort}}/features/{encoder}/{mag}x/{{slide_id}}.h5",
            encoder=list(ENCODERS),
            mag=MAGS,
        ),
        hierarchy=expand(
            "results/{{cohort}}/features/{encoder}/hier_5x_20x/{{slide_id}}.h5",
            encoder=list(ENCODERS) if HIERARCHY else [],
        ),
    params:
        mags=MAGS,
        encoders=encoder_sources(),
        batch_size=FEATURES["batch_size"],
        num_workers=FEATURES["num_workers"],
        device=FEATURES["device"],
        mpp_fallback=config["mpp_fallback"],
    threads: FEATURES["threads"]
    resources:
        gpu=FEATURES["gpu"],
        mem_mb=FEATURES["mem_mb"],
    log:
        "results/logs/{cohort}/features/{slide_id}.log",
    benchmark:
        "results/benchmarks/{cohort}/features/{slide_id}.tsv"
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow/scripts/features.py"


localrules:
    bag_index,


rule bag_index:
    input:
        unpack(encoder_bags),
    output:
        "results/{cohort}/features/{encoder}/bags.tsv",
    params:
        mags=MAGS,
    log:
        "results/logs/{cohort}/bag_index/{encoder}.log",
    conda:
        "../envs/tissue.yaml"
    script:
        "../workflow/scripts/bag_index.py"


rule embed_prompts:
    input:
        prompts=prompt_file,
        trained=text_trained_encoder,
    output:
        "results/{cohort}/text/{encoder}/{prompts}.h5",
    params:
        encoder=text_encoder_source,
        device=FEATURES["device"],
    resources:
        gpu=FEATURES["gpu"],
    log:
        "results/logs/{cohort}/embed_prompts/{encoder}/{prompts}.log",
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow/scripts/embed_prompts.py"
