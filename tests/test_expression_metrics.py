"""Expression metrics: undefined genes dropped before ranking, HEG-k/HVG-k, markers, hit@K, matching
by barcode and gene name (never row order), and the metrics CLI."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from slidesnake.cli import main
from slidesnake.evaluate.expression import (
    ExpressionMetricsError,
    align,
    expression_metrics,
    hit_at_k,
    per_gene_pearson,
    summarize,
)


def test_constant_genes_are_dropped_before_ranking():
    rng = np.random.default_rng(0)
    truth = rng.normal(size=(50, 4)) + np.array([100.0, 1.0, 2.0, 3.0])
    truth[:, 0] = 100.0  # highest mean but constant in truth: no r, must not take the HEG-1 slot
    pred = truth + rng.normal(scale=0.5, size=truth.shape)
    pred[:, 2] = 7.0  # constant prediction: no r either
    metrics, table = expression_metrics(truth, pred, ["A", "B", "C", "D"])
    assert table.set_index("gene")["defined"].tolist() == [False, True, False, True]
    values = metrics.set_index("metric")["value"]
    r = table.set_index("gene")["r"]
    assert values["HEG-1"] == pytest.approx(r["D"])  # D has the highest mean among defined genes
    assert values["HEG-3"] == pytest.approx(r[["B", "D"]].mean())
    assert values["genes_undefined"] == 2


def test_pearson_matches_numpy_and_hit_at_k():
    rng = np.random.default_rng(1)
    truth, pred = rng.normal(size=(30, 6)), rng.normal(size=(30, 6))
    table = per_gene_pearson(truth, pred, list("abcdef"))
    np.testing.assert_allclose(table["r"], [np.corrcoef(truth[:, j], pred[:, j])[0, 1] for j in range(6)])
    assert hit_at_k(truth, truth, 1) == 1.0
    assert hit_at_k(truth, -truth, 1) == 0.0


def test_markers_and_summary_over_folds():
    rng = np.random.default_rng(2)
    truth = rng.normal(size=(40, 3))
    metrics, _ = expression_metrics(truth, truth, ["X", "Y", "Z"], markers=["Y", "MISSING"])
    values = metrics.set_index("metric")["value"]
    assert values["marker:Y"] == pytest.approx(1.0) and np.isnan(values["marker:MISSING"])
    frames = {("ridge", "enc", k): pd.DataFrame({"metric": ["HEG-1"], "value": [v]}) for k, v in enumerate([0.2, 0.4])}
    out = summarize(frames).iloc[0]
    assert out["mean"] == pytest.approx(0.3) and out["std"] == pytest.approx(np.std([0.2, 0.4], ddof=1))
    assert out["n_folds"] == 2


def _pair():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(20, 3)).astype(np.float32)
    measured = ad.AnnData(
        x, obs=pd.DataFrame(index=[f"B{i}" for i in range(20)]), var=pd.DataFrame(index=["g1", "g2", "g3"])
    )
    measured.uns["expression_target"] = {"target_sum": 1e4, "log1p": True}
    order = rng.permutation(20)
    pred = ad.AnnData(x[order][:, [2, 0, 1]], obs=pd.DataFrame(index=measured.obs_names[order]),
                      var=pd.DataFrame(index=["g3", "g1", "g2"]))  # fmt: skip
    return pred, measured


def test_align_matches_barcodes_and_genes_not_rows():
    pred, measured = _pair()
    truth, p, _, genes = align(pred, measured)
    np.testing.assert_allclose(truth, p)
    assert genes == ["g3", "g1", "g2"]
    with pytest.raises(ExpressionMetricsError, match="no predicted spot barcode"):
        align(
            pred[:, :].copy().__class__(pred.X, obs=pd.DataFrame(index=[f"Z{i}" for i in range(20)]), var=pred.var),
            measured,
        )


def test_metrics_cli_writes_one_row_per_metric_and_gene_table(tmp_path):
    pred, measured = _pair()
    pred.write_h5ad(tmp_path / "P.h5ad")
    measured.write_h5ad(tmp_path / "M.h5ad")
    rc = main(["expression", "metrics", "--predicted", str(tmp_path / "P.h5ad"), "--measured", str(tmp_path / "M.h5ad"),
               "--out", str(tmp_path / "metrics.csv")])  # fmt: skip
    assert rc in (0, None)
    metrics = pd.read_csv(tmp_path / "metrics.csv").set_index("metric")["value"]
    assert metrics["pearson_mean"] == pytest.approx(1.0) and metrics["hit@1"] == 1.0
    assert {"HEG-1", "HVG-50", "hit@5"} <= set(metrics.index)
    assert len(pd.read_csv(tmp_path / "metrics_genes.csv")) == 3
