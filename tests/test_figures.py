"""ROC and Kaplan-Meier report figures: AUCs in the legend equal scikit-learn's on the test split only,
and the KM log-rank p uses per-fold median risk groups."""

import numpy as np
import pandas as pd
import pytest
from lifelines.statistics import logrank_test
from PIL import Image
from sklearn.metrics import roc_auc_score

from slidesnake.evaluate.figures import FPR_GRID, FigureInputError, km_figure, macro_roc, roc_figure
from slidesnake.io.atomic import write_parquet
from slidesnake.tasks import Task

SUBTYPE = Task(name="subtype", kind="classification", column="label")
MUTATIONS = Task(name="mut", kind="multilabel", source="mutations", genes=("TP53", "EGFR", "ALK"))
SURVIVAL = Task(name="os", kind="survival", source="clinical")


def _write_folds(root, n_folds, make_rows, seed=0):
    """One predictions.parquet per fold: test rows from ``make_rows`` plus val rows with inverted scores."""
    rng = np.random.default_rng(seed)
    paths = []
    for fold in range(n_folds):
        test = make_rows(rng, fold).assign(fold=fold, split="test")
        val = test.copy().assign(split="val")
        score_cols = [c for c in val.columns if c.startswith("prob_") or c == "risk"]
        val[score_cols] = 1.0 - val[score_cols]  # if val rows leaked into a curve, its AUC would flip
        frame = pd.concat([val, test], ignore_index=True)
        frame.insert(0, "slide_id", [f"f{fold}s{i}" for i in range(len(frame))])
        frame.insert(1, "case_id", [f"f{fold}c{i}" for i in range(len(frame))])
        paths.append(str(root / f"fold{fold}" / "predictions.parquet"))
        write_parquet(paths[-1], frame)
    return paths


def _binary_rows(rng, fold):
    target = rng.integers(0, 2, 16)
    target[:2] = [0, 1]
    pos = np.clip(0.3 * target + rng.uniform(0, 0.7, 16), 0, 1)
    return pd.DataFrame(
        {"label": np.where(target, "pos", "neg"), "target": target, "prob_neg": 1 - pos, "prob_pos": pos}
    )


def test_binary_roc_aucs_equal_sklearn_per_fold_and_mean(tmp_path):
    paths = _write_folds(tmp_path, 3, _binary_rows)
    aucs = roc_figure(paths, SUBTYPE, tmp_path / "roc.png")
    expected = []
    for path in paths:
        test = pd.read_parquet(path).query("split == 'test'")
        expected.append(roc_auc_score(test["target"], test["prob_pos"]))
    assert [aucs[f"fold{k}"] for k in range(3)] == pytest.approx(expected)
    assert aucs["mean"] == pytest.approx(np.mean(expected)) and aucs["std"] == pytest.approx(np.std(expected, ddof=1))
    assert 0.5 < aucs["mean"] < 1.0  # informative but imperfect scores: a real curve, not a corner
    assert Image.open(tmp_path / "roc.png").size == (550, 500)


def test_multiclass_roc_is_macro_one_vs_rest(tmp_path):
    def rows(rng, fold):
        target = np.arange(15) % 3
        prob = rng.dirichlet(np.ones(3), 15) + 0.6 * np.eye(3)[target] * rng.uniform(0, 1, (15, 1))
        prob /= prob.sum(axis=1, keepdims=True)
        return pd.DataFrame({"target": target, **{f"prob_{c}": prob[:, i] for i, c in enumerate("abc")}})

    paths = _write_folds(tmp_path, 2, rows)
    aucs = roc_figure(paths, SUBTYPE, tmp_path / "roc.png")
    for k, path in enumerate(paths):
        test = pd.read_parquet(path).query("split == 'test'")
        expected = roc_auc_score(
            test["target"], test[["prob_a", "prob_b", "prob_c"]], multi_class="ovr", average="macro"
        )
        assert aucs[f"fold{k}"] == pytest.approx(expected)


def test_multilabel_roc_one_auc_per_gene_from_pooled_test(tmp_path):
    def rows(rng, fold):
        y = rng.integers(0, 2, (12, 3))
        y[:, 2] = 0  # ALK never mutated in this cohort: no curve, NaN
        y[0, :2], y[1, :2] = 1, 0
        prob = np.clip(0.4 * y + rng.uniform(0, 0.6, (12, 3)), 0, 1)
        return pd.DataFrame({**{f"target_{g}": y[:, j] for j, g in enumerate(MUTATIONS.genes)},
                             **{f"prob_{g}": prob[:, j] for j, g in enumerate(MUTATIONS.genes)}})  # fmt: skip

    paths = _write_folds(tmp_path, 2, rows)
    aucs = roc_figure(paths, MUTATIONS, tmp_path / "roc.png")
    pooled = pd.concat([pd.read_parquet(p) for p in paths]).query("split == 'test'")
    for gene in ("TP53", "EGFR"):
        assert aucs[gene] == pytest.approx(roc_auc_score(pooled[f"target_{gene}"], pooled[f"prob_{gene}"]))
    assert np.isnan(aucs["ALK"]) and (tmp_path / "roc.png").is_file()


def test_macro_roc_of_perfect_and_inverted_scores():
    y = np.array([0, 0, 1, 1])
    perfect = macro_roc(y, np.stack([1 - np.array([0.1, 0.2, 0.8, 0.9]), [0.1, 0.2, 0.8, 0.9]], axis=1))
    assert perfect[0] == 0.0 and np.all(perfect[1:] == 1.0)
    inverted = macro_roc(y, np.stack([[0.1, 0.2, 0.8, 0.9], 1 - np.array([0.1, 0.2, 0.8, 0.9])], axis=1))
    assert np.all(inverted[FPR_GRID < 1.0] == 0.0)


def test_km_figure_splits_risk_within_each_fold(tmp_path):
    def rows(rng, fold):
        high = np.arange(10) >= 5  # the top half of each fold's risks dies early
        risk = 10.0 * fold + np.arange(10)  # fold 1's risks are all above fold 0's
        time = np.where(high, rng.uniform(1, 20, 10), rng.uniform(200, 300, 10))
        return pd.DataFrame({"time": time, "event": np.ones(10, int), "risk": risk})

    paths = _write_folds(tmp_path, 2, rows)
    p = km_figure(paths, SURVIVAL, tmp_path / "km.png")
    test = pd.concat([pd.read_parquet(path) for path in paths]).query("split == 'test'")
    high = test["risk"].to_numpy() % 10 >= 5
    expected = logrank_test(test["time"][~high], test["time"][high], test["event"][~high], test["event"][high]).p_value
    assert p == pytest.approx(expected) and p < 1e-4
    assert Image.open(tmp_path / "km.png").size == (550, 450)


def test_figures_check_task_kind_and_survive_empty_test(tmp_path):
    with pytest.raises(FigureInputError, match="survival"):
        km_figure([], SUBTYPE, tmp_path / "x.png")
    with pytest.raises(FigureInputError, match="classification"):
        roc_figure([], SURVIVAL, tmp_path / "x.png")
    assert np.isnan(km_figure([], SURVIVAL, tmp_path / "empty.png")) and (tmp_path / "empty.png").is_file()
