"""Spot-expression metrics (HECLIP/BLEEP/HEST protocol) and spatial plots of predicted vs measured genes.

Per-gene Pearson r over the held-out section's spots. Genes constant in the truth or in the prediction
have no r: they are dropped BEFORE any ranking (the reference ranks the unfiltered genes and indexes
the filtered r with those ranks, which misaligns). HEG-k = mean r of the k genes with the highest mean
measured expression, HVG-k = of the k with the highest measured variance, k ∈ {1, 3, 5, 10, 50};
marker genes' r; hit@K = fraction of spots whose predicted top-K genes share a gene with the measured
top-K (BLEEP's gene-ranking overlap). Predicted and measured spots are matched by barcode, genes by name.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from slidesnake.io.atomic import atomic_path, write_csv

log = logging.getLogger(__name__)

TOP_K = (1, 3, 5, 10, 50)
HIT_K = (1, 2, 3, 4, 5)


class ExpressionMetricsError(ValueError):
    """Predictions and measurements that cannot be compared (no shared spots or genes)."""


def _dense(x) -> np.ndarray:
    return np.asarray(x.toarray() if sp.issparse(x) else x, dtype=np.float64)


def per_gene_pearson(truth: np.ndarray, pred: np.ndarray, genes: Sequence[str]) -> pd.DataFrame:
    """gene, r, mean and variance of the truth, and ``defined`` (False: constant truth or prediction)."""
    t, p = np.asarray(truth, np.float64), np.asarray(pred, np.float64)
    if t.shape != p.shape or t.shape[1] != len(genes):
        raise ExpressionMetricsError(f"truth {t.shape}, prediction {p.shape} and {len(genes)} genes disagree")
    tc, pc = t - t.mean(axis=0), p - p.mean(axis=0)
    ts, ps = np.sqrt((tc**2).sum(axis=0)), np.sqrt((pc**2).sum(axis=0))
    scale = np.maximum(np.abs(t).max(axis=0), 1e-12)
    defined = (ts > 1e-9 * scale * np.sqrt(len(t))) & (ps > 1e-12) & (len(t) > 2)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.where(defined, (tc * pc).sum(axis=0) / (ts * ps), np.nan)
    return pd.DataFrame({"gene": list(genes), "r": r, "mean_true": t.mean(axis=0), "var_true": t.var(axis=0),
                         "defined": defined})  # fmt: skip


def hit_at_k(truth: np.ndarray, pred: np.ndarray, k: int) -> float:
    """Fraction of spots whose predicted top-k genes intersect the measured top-k genes."""
    k = min(k, truth.shape[1])
    top_t = np.argpartition(-truth, k - 1, axis=1)[:, :k]
    top_p = np.argpartition(-pred, k - 1, axis=1)[:, :k]
    hits = [bool(np.intersect1d(a, b).size) for a, b in zip(top_t, top_p)]
    return float(np.mean(hits)) if hits else float("nan")


def expression_metrics(
    truth: np.ndarray,
    pred: np.ndarray,
    genes: Sequence[str],
    markers: Sequence[str] = (),
    top_k: Sequence[int] = TOP_K,
    hit_k: Sequence[int] = HIT_K,
    gene_groups: dict[str, Sequence[str]] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(metrics: one row per metric with value and n_genes, per-gene table)."""
    table = per_gene_pearson(truth, pred, genes)
    dropped = int((~table["defined"]).sum())
    if dropped:
        log.info("%d of %d gene(s) constant in truth or prediction: no r, dropped before ranking", dropped, len(table))
    ok = table[table["defined"]]
    rows = [{"metric": "pearson_mean", "value": ok["r"].mean(), "n_genes": len(ok)},
            {"metric": "pearson_median", "value": ok["r"].median(), "n_genes": len(ok)},
            {"metric": "genes_undefined", "value": float(dropped), "n_genes": len(table)}]  # fmt: skip
    for name, col in (("HEG", "mean_true"), ("HVG", "var_true")):
        ranked = ok.sort_values(col, ascending=False, kind="stable")
        for k in top_k:
            top = ranked.head(k)
            rows.append(
                {"metric": f"{name}-{k}", "value": top["r"].mean() if len(top) else np.nan, "n_genes": len(top)}
            )
    by_gene = ok.set_index("gene")["r"]
    for m in markers:
        rows.append({"metric": f"marker:{m}", "value": by_gene.get(m, np.nan), "n_genes": int(m in by_gene)})
    if markers:
        present = [m for m in markers if m in by_gene]
        rows.append({"metric": "markers_mean", "value": by_gene[present].mean() if present else np.nan,
                     "n_genes": len(present)})  # fmt: skip
    for group, members in (gene_groups or {}).items():
        present = [g for g in members if g in by_gene]
        rows.append({"metric": f"group:{group}", "value": by_gene[present].mean() if present else np.nan,
                     "n_genes": len(present)})  # fmt: skip
    t, p = np.asarray(truth, np.float64), np.asarray(pred, np.float64)
    for k in hit_k:
        rows.append({"metric": f"hit@{k}", "value": hit_at_k(t, p, k), "n_genes": len(genes)})
    return pd.DataFrame(rows), table


def align(predicted: ad.AnnData, measured: ad.AnnData) -> tuple[np.ndarray, np.ndarray, list[str], list[str]]:
    """(truth, prediction, barcodes, genes): spots matched by barcode, genes by name; unmatched are logged."""
    barcodes = [b for b in predicted.obs_names if b in set(measured.obs_names)]
    genes = [g for g in predicted.var_names if g in set(measured.var_names)]
    if not barcodes:
        raise ExpressionMetricsError("no predicted spot barcode is among the measured spots")
    if not genes:
        raise ExpressionMetricsError("no predicted gene name is among the measured genes")
    for what, n_pred, n_used in (("spot", predicted.n_obs, len(barcodes)), ("gene", predicted.n_vars, len(genes))):
        if n_used < n_pred:
            log.warning("%d predicted %s(s) have no measurement: dropped", n_pred - n_used, what)
    truth = _dense(measured[barcodes, genes].X)
    pred = _dense(predicted[barcodes, genes].X)
    return truth, pred, barcodes, genes


def normalised_measurement(measured: ad.AnnData, recipe: dict) -> ad.AnnData:
    """The measured AnnData in the prediction's target space (raw counts are normalised as training did)."""
    if measured.uns.get("expression_target"):
        return measured
    from slidesnake.models.expression.data import clean_section, normalise

    x = measured.X
    values = x.data if sp.issparse(x) else np.asarray(x)
    if values.size and np.allclose(values, np.round(values)):
        target = recipe.get("target_sum")
        measured = normalise(clean_section(measured, "measured"), None if target in (None, "none") else float(target),
                             bool(recipe.get("log1p", True)))  # fmt: skip
    return measured


def compare_files(
    predicted_h5ad: str | os.PathLike,
    measured_h5ad: str | os.PathLike,
    out_csv: str | os.PathLike,
    genes_csv: str | os.PathLike | None = None,
    markers: Sequence[str] = (),
) -> pd.DataFrame:
    """``slidesnake expression metrics``: metrics.csv (one row per metric) and the per-gene table beside it."""
    predicted = ad.read_h5ad(predicted_h5ad)
    measured = normalised_measurement(ad.read_h5ad(measured_h5ad), dict(predicted.uns.get("expression_target", {})))
    truth, pred, _, genes = align(predicted, measured)
    metrics, table = expression_metrics(truth, pred, genes, markers)
    write_csv(out_csv, metrics)
    genes_csv = genes_csv or str(out_csv).removesuffix(".csv") + "_genes.csv"
    write_csv(genes_csv, table)
    return metrics


def summarize(frames: dict[tuple[str, str, int], pd.DataFrame]) -> pd.DataFrame:
    """model, encoder, metric, mean, std (over folds, ddof 1) and n_folds from per-fold metric tables."""
    rows = []
    for (model, encoder, fold), frame in frames.items():
        for metric, value in zip(frame["metric"], frame["value"]):
            rows.append({"model": model, "encoder": encoder, "fold": fold, "metric": metric, "value": value})
    long = pd.DataFrame(rows)
    grouped = long.groupby(["model", "encoder", "metric"], sort=False)["value"]
    out = grouped.agg(mean="mean", std="std", n_folds="count").reset_index()
    return out


def spatial_figure(
    measured: ad.AnnData,
    predictions: dict[str, ad.AnnData],
    genes: Sequence[str],
    out_png: str | os.PathLike,
    title: str = "",
) -> None:
    """One row per gene: measured, then each model's prediction, scanpy-style spots on the hires image."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import scanpy as sc

    library = next(iter(measured.uns.get("spatial", {})), None)
    has_image = library is not None and "hires" in measured.uns["spatial"][library].get("images", {})
    genes = [g for g in genes if g in measured.var_names and all(g in p.var_names for p in predictions.values())]
    if not genes:
        raise ExpressionMetricsError(f"none of the plotted genes are in the measured and predicted data ({title})")
    cols = 1 + len(predictions)
    fig, axes = plt.subplots(len(genes), cols, figsize=(3.2 * cols, 3.0 * len(genes)), squeeze=False)
    for i, gene in enumerate(genes):
        panels = [("measured", measured)] + list(predictions.items())
        values = [_dense(a[:, gene].X).ravel() for _, a in panels]
        vmin, vmax = min(v.min() for v in values), max(v.max() for v in values)
        for j, (name, a) in enumerate(panels):
            shown = measured[[b for b in a.obs_names if b in set(measured.obs_names)]].copy()
            shown.obs["value"] = _dense(a[shown.obs_names, gene].X).ravel()
            sc.pl.spatial(shown, color="value", img_key="hires" if has_image else None, library_id=library,
                          ax=axes[i, j], show=False, vmin=vmin if name == "measured" else None,
                          vmax=vmax if name == "measured" else None, title=f"{gene}: {name}",
                          colorbar_loc=None, frameon=False, spot_size=None if has_image else 1.0)  # fmt: skip
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=80)
    plt.close(fig)


def plot_genes(measured: ad.AnnData, markers: Sequence[str], n: int) -> list[str]:
    """Genes to draw: the markers that were measured, then the most variable measured genes, n in all."""
    chosen = [m for m in markers if m in measured.var_names][:n]
    variance = pd.Series(_dense(measured.X).var(axis=0), index=measured.var_names).sort_values(ascending=False)
    chosen += [g for g in variance.index if g not in chosen][: max(0, n - len(chosen))]
    return chosen
