"""The synthetic Visium chain end to end through Snakemake (source demo_visium): structured genes are
predicted (mean Pearson >= 0.5 for HECLIP and the ridge probe), pure-noise genes are not (|mean r| <= 0.1)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from conftest import REPO, run_snakemake

from slidesnake.data.demo_visium import DemoVisiumConfig, gene_table

pytestmark = pytest.mark.workflow
CONFIG = REPO / "config" / "cohorts" / "demo_visium.yaml"


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("expression_wf")
    run_snakemake(work, "--cores", "2", configfile=CONFIG)
    return work / "results" / "demo_visium"


def test_summary_has_every_model_and_metric(run):
    summary = pd.read_csv(run / "eval" / "expression" / "summary.csv")
    assert set(summary["model"]) == {"heclip", "bleep", "ridge"}
    metrics = set(summary["metric"])
    assert {f"HEG-{k}" for k in (1, 3, 5, 10, 50)} <= metrics and {f"HVG-{k}" for k in (1, 3, 5, 10, 50)} <= metrics
    assert {"hit@1", "hit@5", "markers_mean", "marker:G000SOL"} <= metrics
    assert (summary.loc[summary["metric"] == "pearson_mean", "n_folds"] == 4).all()
    for fold in range(4):
        assert (run / "eval" / "expression" / "spatial" / "tiny-clip" / f"fold{fold}.png").stat().st_size > 10_000


@pytest.mark.parametrize("model", ["heclip", "ridge", "bleep"])
def test_structured_genes_predicted_noise_genes_not(run, model):
    kinds = gene_table(DemoVisiumConfig()).set_index("gene")["kind"]
    per_fold = []
    for fold in range(4):
        genes = pd.read_csv(run / "eval" / "expression" / model / "tiny-clip" / f"fold{fold}" / "genes.csv")
        genes = genes[genes["defined"]].set_index("gene")
        per_fold.append(genes["r"].groupby(kinds.loc[genes.index]).mean())
    mean = pd.concat(per_fold, axis=1).mean(axis=1)
    assert (kinds == "noise").sum() and "noise" in mean.index
    if model in ("heclip", "ridge"):
        assert mean["structured"] >= 0.5, mean
    assert abs(mean["noise"]) <= 0.1, mean
