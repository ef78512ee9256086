"""Snakemake adapter (rule cplip_align): CPLIP-style MIL-NCE alignment of an encoder on one fold's train patients."""

from pathlib import Path

import h5py
import pandas as pd

from slidesnake.joblog import setup_job_logging
from slidesnake.models.vl.prompts import read_prompt_dictionary
from slidesnake.tasks import class_names, job_task_labels
from slidesnake.train.contrastive import ContrastiveParams, align_prompt_bags

setup_job_logging(snakemake.log[0])
cfg = dict(snakemake.params.cplip)
task, labels = job_task_labels(snakemake, snakemake.params.task_name)
classes = class_names(task, labels)
bags = read_prompt_dictionary(snakemake.input.dictionary, classes)
slides = {}
known = set(labels["slide_id"])
for coords_h5, slide in zip(snakemake.input.coords, snakemake.input.slides):
    slide_id = Path(coords_h5).stem
    if slide_id in known:
        with h5py.File(coords_h5, "r") as f:
            slides[slide_id] = (slide, f["coords"][()].reshape(-1, 2))
folds = pd.read_csv(snakemake.input.folds, dtype={"slide_id": str, "case_id": str})
fold = folds[folds["fold"] == cfg["fold"]]
align_prompt_bags(
    snakemake.params.base,
    bags,
    slides,
    dict(zip(labels["slide_id"], labels["target"])),
    dict(zip(fold["slide_id"], fold["split"])),
    classes,
    str(Path(snakemake.output[0]).parent),
    name=snakemake.params.name,
    magnification=cfg["magnification"],
    tiles_per_slide=cfg["tiles_per_slide"],
    texts_per_class=cfg["texts_per_class"],
    tau=cfg["tau"],
    tune=cfg["tune"],
    image_bag=cfg["image_bag"],
    candidates_per_slide=cfg["candidates_per_slide"],
    params=ContrastiveParams(
        epochs=cfg["epochs"],
        lr=cfg["lr"],
        weight_decay=0.0,
        patience=cfg["patience"],
        seed=cfg["seed"],
        device=cfg["device"],
    ),
    fallback_mpp=snakemake.params.mpp_fallback,
)
