"""5x parents linked to their 4×4 20x children on the shared grid (DESIGN §3)."""


rule link_hierarchy:
    input:
        f5="results/{cohort}/features/{encoder}/5x/{slide_id}.h5",
        f20="results/{cohort}/features/{encoder}/20x/{slide_id}.h5",
    output:
        "results/{cohort}/features/{encoder}/hier_5x_20x/{slide_id}.h5",
    log:
        "results/logs/{cohort}/link_hierarchy/{encoder}/{slide_id}.log",
    conda:
        "../envs/tissue.yaml"
    group:
        "link"
    script:
        "../workflow/scripts/link_hierarchy.py"
