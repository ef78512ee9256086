"""The synthetic Visium chain end to end through Snakemake (source demo_visium) on demo-clip features (the
pipeline pretrains demo-clip on the demo's caption corpus for this cohort too): structured genes are
predicted (mean Pearson >= 0.5 for HECLIP and the ridge probe), pure-noise genes are not (|mean r| <= 0.1).
Only demo-clip runs here (the cohort config adds the random tiny-clip control) to keep the run small.
Slow (about 6 min on 2 cores): `make test-slow` (CI) runs it; `make test` keeps the expression models'
unit tests (tests/test_expression_models.py, tests/test_demo_visium.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import REPO, planned_jobs, run_snakemake, write_config

from slidesnake.data.demo_visium import DemoVisiumConfig, gene_table

pytestmark = [pytest.mark.workflow, pytest.mark.slow]
CONFIG = REPO / "config" / "cohorts" / "demo_visium.yaml"
ENCODER = "demo-clip"


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("expression_wf")
    config = write_config(work / "config.yaml", base=CONFIG, features={"encoders": [ENCODER]})
    run_snakemake(work, "--cores", "2", configfile=config)
    return work / "results" / "demo_visium"


def test_demo_clip_is_pretrained_for_the_cohort_and_feeds_its_spot_features(run):
    """demo-clip is trained from this cohort's own caption corpus, and its weights are a file input of the
    spot-feature jobs: newer weights rerun the features and everything after them, not the pretraining."""
    folder = run / "encoders" / ENCODER
    training = yaml.safe_load((folder / "training.json").read_text())
    assert training["name"] == ENCODER and training["corpus"]["train"].endswith("demo_visium/captions/train.h5")
    weights = folder / "open_clip_model.safetensors"
    stat = weights.stat()
    os.utime(weights, (stat.st_atime, stat.st_mtime + 3600))
    try:
        jobs = planned_jobs(
            run_snakemake(run.parent.parent, "-n", "--cores", "1", configfile=run.parent.parent / "config.yaml")
        )
    finally:
        os.utime(weights, (stat.st_atime, stat.st_mtime))
    assert jobs.get("spot_features") == 4 and jobs.get("expression_fold") == 12 and "pretrain_demo_clip" not in jobs


def test_summary_has_every_model_and_metric(run):
    summary = pd.read_csv(run / "eval" / "expression" / "summary.csv")
    assert set(summary["model"]) == {"heclip", "bleep", "ridge"} and set(summary["encoder"]) == {ENCODER}
    metrics = set(summary["metric"])
    assert {f"HEG-{k}" for k in (1, 3, 5, 10, 50)} <= metrics and {f"HVG-{k}" for k in (1, 3, 5, 10, 50)} <= metrics
    assert {"hit@1", "hit@5", "markers_mean", "marker:G000SOL"} <= metrics
    assert (summary.loc[summary["metric"] == "pearson_mean", "n_folds"] == 4).all()
    for fold in range(4):
        assert (run / "eval" / "expression" / "spatial" / ENCODER / f"fold{fold}.png").stat().st_size > 10_000


@pytest.mark.parametrize("model", ["heclip", "ridge", "bleep"])
def test_structured_genes_predicted_noise_genes_not(run, model):
    kinds = gene_table(DemoVisiumConfig()).set_index("gene")["kind"]
    per_fold = []
    for fold in range(4):
        genes = pd.read_csv(run / "eval" / "expression" / model / ENCODER / f"fold{fold}" / "genes.csv")
        genes = genes[genes["defined"]].set_index("gene")
        per_fold.append(genes["r"].groupby(kinds.loc[genes.index]).mean())
    mean = pd.concat(per_fold, axis=1).mean(axis=1)
    assert (kinds == "noise").sum() and "noise" in mean.index
    if model in ("heclip", "ridge"):
        assert mean["structured"] >= 0.5, mean
    assert abs(mean["noise"]) <= 0.1, mean
