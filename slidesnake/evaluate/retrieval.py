"""HLIP evaluation (DESIGN §3): zero-shot F1@K with CIs over repeats, cross-modal R@K both ways, clinical
field -> histology retrieval, stage retrieval, survival retrieval (C-index), high-malignancy ratios.

Every similarity search is a chunked matmul + top-k (:func:`chunked_topk`), so memory is bounded by
the chunk sizes, not by tiles x captions. Tile embeddings come from the features rule's files of the
test slides; caption embeddings from the same encoder's text tower. The metrics table is long:
one row per (metric, group, k) with value, 95% CI where defined, and n.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

log = logging.getLogger(__name__)

METRIC_COLUMNS = ("encoder", "metric", "group", "k", "value", "ci_low", "ci_high", "n")
BACKGROUND_CAPTION = "An image of empty white background without tissue."


class RetrievalError(ValueError):
    """Inputs that cannot be evaluated (no test tiles, mismatched shapes)."""


# ------------------------------------------------------------------------------------------ search


def chunked_topk(
    queries: np.ndarray | torch.Tensor,
    gallery: np.ndarray | torch.Tensor,
    k: int,
    query_chunk: int = 2048,
    gallery_chunk: int = 32768,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` gallery rows by inner product for every query: (scores, indices), each (Q, k).

    Memory peaks at query_chunk x (gallery_chunk + k) scores, whatever Q and G are: each query chunk
    keeps a running top-k merged with every gallery chunk's top-k.
    """
    q = torch.as_tensor(np.asarray(queries, np.float32))
    g = torch.as_tensor(np.asarray(gallery, np.float32))
    if q.ndim != 2 or g.ndim != 2 or q.shape[1] != g.shape[1]:
        raise RetrievalError(f"queries {tuple(q.shape)} and gallery {tuple(g.shape)} must be (Q,D) and (G,D)")
    k = min(int(k), len(g))
    scores = np.empty((len(q), k), np.float32)
    index = np.empty((len(q), k), np.int64)
    for qs in range(0, len(q), query_chunk):
        block = q[qs : qs + query_chunk]
        best_s = torch.full((len(block), 0), -math.inf)
        best_i = torch.zeros((len(block), 0), dtype=torch.int64)
        for gs in range(0, len(g), gallery_chunk):
            sims = block @ g[gs : gs + gallery_chunk].T
            s, i = sims.topk(min(k, sims.shape[1]), dim=1)
            best_s, order = torch.cat([best_s, s], 1).topk(min(k, best_s.shape[1] + s.shape[1]), dim=1)
            best_i = torch.cat([best_i, i + gs], 1).gather(1, order)
        scores[qs : qs + len(block)] = best_s.numpy()
        index[qs : qs + len(block)] = best_i.numpy()
    return scores, index


def recall_at_k(
    topk_index: np.ndarray, query_groups: np.ndarray, gallery_groups: np.ndarray, ks: Sequence[int]
) -> dict[int, float]:
    """Fraction of queries with a gallery item of their own group among their top K, for each K."""
    hits = np.asarray(gallery_groups)[topk_index] == np.asarray(query_groups)[:, None]
    return {int(k): float(hits[:, :k].any(axis=1).mean()) for k in ks}


def precision_at_k(
    topk_index: np.ndarray, query_groups: np.ndarray, gallery_groups: np.ndarray, ks: Sequence[int]
) -> dict[int, np.ndarray]:
    """Per query, the fraction of its top K gallery items that are of its group."""
    hits = np.asarray(gallery_groups)[topk_index] == np.asarray(query_groups)[:, None]
    return {int(k): hits[:, :k].mean(axis=1) for k in ks}


def softmax_scores(tiles: np.ndarray, texts: np.ndarray, logit_scale: float, chunk: int = 65536) -> np.ndarray:
    """softmax(logit_scale x tile.text) over a small caption set, chunked over tiles: (N, T) float32."""
    t = torch.as_tensor(np.asarray(texts, np.float32))
    out = np.empty((len(tiles), len(t)), np.float32)
    for s in range(0, len(tiles), chunk):
        block = torch.as_tensor(np.asarray(tiles[s : s + chunk], np.float32))
        out[s : s + len(block)] = torch.softmax(logit_scale * block @ t.T, dim=1).numpy()
    return out


# --------------------------------------------------------------------------------------- metrics


def f1_at_k(
    predicted: np.ndarray,
    truth: np.ndarray,
    slide_of_tile: np.ndarray,
    ks: Sequence[int] = (10, 50, 100),
    repeats: int = 100,
    seed: int = 0,
) -> pd.DataFrame:
    """Zero-shot F1@K: per repeat, K tiles sampled per slide (all of a slide's tiles when it has fewer),
    weighted F1 of their predictions against their slide's label; mean and 95% percentile CI over the
    ``repeats`` repeats (never the maximum). Rows: k, mean, ci_low, ci_high, repeats, tiles."""
    from sklearn.metrics import f1_score

    predicted, truth, slides = np.asarray(predicted), np.asarray(truth), np.asarray(slide_of_tile)
    groups = [np.flatnonzero(slides == s) for s in np.unique(slides)]
    rows = []
    for k in ks:
        rng = np.random.default_rng([seed, int(k)])
        values, n = [], 0
        for _ in range(repeats):
            pick = np.concatenate([g if len(g) <= k else rng.choice(g, k, replace=False) for g in groups])
            n = len(pick)
            values.append(f1_score(truth[pick], predicted[pick], average="weighted", zero_division=0))
        values_a = np.asarray(values)
        rows.append(
            {
                "k": int(k),
                "mean": float(values_a.mean()),
                "ci_low": float(np.percentile(values_a, 2.5)),
                "ci_high": float(np.percentile(values_a, 97.5)),
                "repeats": int(repeats),
                "tiles": int(n),
            }
        )
    return pd.DataFrame(rows)


def majority_vote(tile_labels: np.ndarray, slide_of_tile: np.ndarray) -> pd.Series:
    """Per slide, its tiles' most frequent label (ties: the smallest label, so the vote is deterministic)."""
    df = pd.DataFrame({"slide": slide_of_tile, "label": tile_labels})
    counts = df.groupby(["slide", "label"]).size().reset_index(name="n")
    counts = counts.sort_values(["slide", "n", "label"], ascending=[True, False, True])
    return counts.drop_duplicates("slide").set_index("slide")["label"]


def survival_cindex(predicted_days: np.ndarray, os_days: np.ndarray, os_event: np.ndarray) -> float:
    """Harrell's C-index (lifelines) of predicted survival days against observed OS (higher = longer)."""
    from lifelines.utils import concordance_index

    ok = np.isfinite(predicted_days) & np.isfinite(os_days)
    if ok.sum() < 2 or np.asarray(os_event)[ok].sum() == 0:
        return math.nan
    return float(concordance_index(np.asarray(os_days)[ok], np.asarray(predicted_days)[ok], np.asarray(os_event)[ok]))


def high_malignancy(
    stage_probs: np.ndarray, background: np.ndarray | None = None, threshold: float = 0.6
) -> np.ndarray:
    """Per tile: P(stage III or IV) = P(III) + P(IV) over the four stage captions ≥ ``threshold``;
    background tiles are never high. ``stage_probs`` is (N, 4) in I..IV order.

    The seed code asks for argmax ∈ {III, IV} *and* that one stage's probability ≥ 0.6, so a tile that
    is surely high-stage but split between III and IV (0.45 / 0.35) is not high; the stage groups
    compared are I–II vs III–IV, so the event scored here is the group's.
    """
    probs = np.asarray(stage_probs)
    high = probs[:, 2:].sum(axis=1) >= threshold
    if background is not None:
        high &= ~np.asarray(background, bool)
    return high


def malignancy_ratios(high: np.ndarray, background: np.ndarray, slide_of_tile: np.ndarray) -> pd.Series:
    """Per slide: high-malignancy tiles / non-background tiles (NaN for a slide that is all background)."""
    df = pd.DataFrame({"slide": slide_of_tile, "high": high, "tissue": ~np.asarray(background, bool)})
    grouped = df.groupby("slide")
    tissue = grouped["tissue"].sum()
    return (grouped["high"].sum() / tissue.where(tissue > 0)).astype(float)


def compare_groups(low: np.ndarray, high: np.ndarray) -> dict[str, float]:
    """Welch's t-test and Mann–Whitney U (two-sided, scipy) of two samples; NaN when either has < 2."""
    from scipy import stats

    low, high = np.asarray(low, float), np.asarray(high, float)
    low, high = low[np.isfinite(low)], high[np.isfinite(high)]
    out = {"n_low": float(len(low)), "n_high": float(len(high)), "mean_low": math.nan, "mean_high": math.nan}
    out.update({"welch_t": math.nan, "welch_p": math.nan, "mwu_u": math.nan, "mwu_p": math.nan})
    if len(low):
        out["mean_low"] = float(low.mean())
    if len(high):
        out["mean_high"] = float(high.mean())
    if len(low) >= 2 and len(high) >= 2:
        t = stats.ttest_ind(high, low, equal_var=False)
        u = stats.mannwhitneyu(high, low, alternative="two-sided")
        out.update({"welch_t": float(t.statistic), "welch_p": float(t.pvalue)})
        out.update({"mwu_u": float(u.statistic), "mwu_p": float(u.pvalue)})
    return out


# --------------------------------------------------------------------------------------- driver


@dataclass(frozen=True)
class RetrievalParams:
    """Settings of one retrieval evaluation (config key ``vl.hlip``)."""

    f1_ks: tuple[int, ...] = (10, 50, 100)
    recall_ks: tuple[int, ...] = (1, 5, 10)
    repeats: int = 100
    seed: int = 0
    threshold: float = 0.6
    survival_bins: tuple[float, ...] = (0, 365, 730, 1825)
    query_chunk: int = 2048
    gallery_chunk: int = 32768


@dataclass
class TestTiles:
    """Embeddings (L2-normalised) and provenance of the test slides' tiles."""

    features: np.ndarray  # (N, D)
    coords: np.ndarray  # (N, 2)
    slide: np.ndarray  # (N,) slide_id
    case: np.ndarray  # (N,) case_id


def read_test_tiles(feature_files: dict[str, str], slide_cases: dict[str, str]) -> TestTiles:
    """Read and L2-normalise the features of the given slides; slides without tiles are logged and skipped."""
    import h5py

    feats, coords, slides, cases, empty = [], [], [], [], []
    for slide_id in sorted(feature_files):
        with h5py.File(feature_files[slide_id], "r") as f:
            x = f["features"][()].astype(np.float32)
            c = f["coords"][()].reshape(-1, 2) if "coords" in f else np.zeros((len(x), 2), np.int64)
        if len(x) == 0:
            empty.append(slide_id)
            continue
        feats.append(x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12))
        coords.append(c)
        slides.append(np.full(len(x), slide_id, dtype=object))
        cases.append(np.full(len(x), slide_cases[slide_id], dtype=object))
    if empty:
        log.warning("%d test slide(s) have zero tiles and are left out: %s", len(empty), ", ".join(empty))
    if not feats:
        raise RetrievalError("no test slide has any tile features: nothing to evaluate")
    return TestTiles(np.concatenate(feats), np.concatenate(coords), np.concatenate(slides), np.concatenate(cases))


def _row(encoder: str, metric: str, group: str, k: float | None, value: float, lo=math.nan, hi=math.nan, n=0) -> dict:
    return {
        "encoder": encoder,
        "metric": metric,
        "group": group,
        "k": math.nan if k is None else k,
        "value": float(value),
        "ci_low": float(lo),
        "ci_high": float(hi),
        "n": int(n),
    }


def evaluate_retrieval(
    encoder_name: str,
    tiles: TestTiles,
    encode_text,
    logit_scale: float,
    captions: pd.DataFrame,
    clinical: pd.DataFrame,
    class_text: np.ndarray | None = None,
    slide_labels: dict[str, int] | None = None,
    params: RetrievalParams | None = None,
) -> tuple[pd.DataFrame, dict[str, dict[str, np.ndarray]]]:
    """All HLIP metrics of one encoder on the test tiles; returns (metrics, per-slide maps).

    ``encode_text(list[str]) -> (T, D)`` L2-normalised embeddings; ``captions`` from
    :func:`slidesnake.data.captions.clinical_captions`; ``class_text`` (C, D) class embeddings and
    ``slide_labels`` (slide -> class index) for zero-shot F1@K (left out when not given).
    """
    from sklearn.metrics import accuracy_score, balanced_accuracy_score

    from slidesnake.data.captions import field_query_captions, stage_captions, survival_bins

    p = params or RetrievalParams()
    rows: list[dict] = []
    x = tiles.features
    log.info("%s: %d test tiles of %d slides", encoder_name, len(x), len(np.unique(tiles.slide)))

    # zero-shot F1@K over sampled tiles
    if class_text is not None and slide_labels:
        keep = np.array([s in slide_labels for s in tiles.slide])
        pred = (x[keep] @ np.asarray(class_text, np.float32).T).argmax(axis=1)
        truth = np.array([slide_labels[s] for s in tiles.slide[keep]])
        table = f1_at_k(pred, truth, tiles.slide[keep], p.f1_ks, p.repeats, p.seed)
        for r in table.itertuples():
            rows.append(_row(encoder_name, "f1_at_k", "all", r.k, r.mean, r.ci_low, r.ci_high, r.tiles))

    # image <-> text R@K over the test pairs (one paragraph per test case)
    test_caps = captions[captions["case_id"].isin(set(tiles.case))].reset_index(drop=True)
    if len(test_caps):
        cap_emb = encode_text(list(test_caps["caption"]))
        cap_case = test_caps["case_id"].to_numpy(dtype=object)
        kmax = max(p.recall_ks)
        _, i2t = chunked_topk(x, cap_emb, kmax, p.query_chunk, p.gallery_chunk)
        for k, v in recall_at_k(i2t, tiles.case, cap_case, p.recall_ks).items():
            rows.append(_row(encoder_name, "image_to_text_recall", "all", k, v, n=len(x)))
        _, t2i = chunked_topk(cap_emb, x, kmax, p.query_chunk, p.gallery_chunk)
        for k, v in recall_at_k(t2i, cap_case, tiles.case, p.recall_ks).items():
            rows.append(_row(encoder_name, "text_to_image_recall", "all", k, v, n=len(cap_emb)))

        # clinical field -> histology: each field's value caption queries the test tiles
        queries = field_query_captions(test_caps)
        if len(queries):
            q_emb = encode_text(list(queries["caption"]))
            _, q_top = chunked_topk(q_emb, x, kmax, p.query_chunk, p.gallery_chunk)
            by_case = test_caps.set_index("case_id")
            for field, part in queries.groupby("field", sort=True):
                idx = part.index.to_numpy()
                tile_values = by_case.loc[tiles.case, field].to_numpy(dtype=object)
                values = part["value"].to_numpy(dtype=object)
                prec = precision_at_k(q_top[idx], values, tile_values, p.recall_ks)
                chance = float(np.mean([(tile_values == v).mean() for v in values]))
                for k, v in prec.items():
                    rows.append(_row(encoder_name, "field_precision", field, k, v.mean(), n=len(values)))
                rows.append(_row(encoder_name, "field_precision_chance", field, None, chance, n=len(values)))

    # stage retrieval, high-malignancy ratio: four stage captions (+ background, excluded)
    clin = clinical.drop_duplicates("case_id").set_index("case_id")
    stages = stage_captions()
    stage_emb = encode_text(list(stages["caption"]) + [BACKGROUND_CAPTION])
    probs_all = softmax_scores(x, stage_emb, logit_scale)
    background = probs_all.argmax(axis=1) == len(stages)
    stage_probs = softmax_scores(x, stage_emb[: len(stages)], logit_scale)
    tile_stage = stage_probs.argmax(axis=1)
    keep = ~background
    if keep.sum() == 0:
        log.warning("%s: every test tile is predicted background; stage votes use all tiles", encoder_name)
        keep = np.ones(len(x), bool)
    voted = majority_vote(tile_stage[keep], tiles.slide[keep])
    slide_case = pd.Series(tiles.case, index=tiles.slide).groupby(level=0).first()
    true_stage = _stage_index(clin.reindex(slide_case.loc[voted.index])["ajcc_stage"])
    ok = true_stage.notna().to_numpy()
    if ok.any():
        y, yhat = true_stage.to_numpy()[ok].astype(int), voted.to_numpy()[ok].astype(int)
        rows.append(_row(encoder_name, "stage_accuracy", "all", None, accuracy_score(y, yhat), n=int(ok.sum())))
        rows.append(
            _row(
                encoder_name, "stage_balanced_accuracy", "all", None, balanced_accuracy_score(y, yhat), n=int(ok.sum())
            )
        )
        projects = (
            clin.reindex(slide_case.loc[voted.index])["project_id"].to_numpy(dtype=object)[ok]
            if "project_id" in clin
            else None
        )
        if projects is not None:
            for project in sorted({str(v) for v in projects}):
                m = projects.astype(str) == project
                rows.append(
                    _row(encoder_name, "stage_accuracy", project, None, accuracy_score(y[m], yhat[m]), n=int(m.sum()))
                )
                rows.append(
                    _row(
                        encoder_name,
                        "stage_balanced_accuracy",
                        project,
                        None,
                        balanced_accuracy_score(y[m], yhat[m]),
                        n=int(m.sum()),
                    )
                )
    high = high_malignancy(stage_probs, background, p.threshold)
    ratios = malignancy_ratios(high, background, tiles.slide)
    ratio_stage = _stage_index(clin.reindex(slide_case.loc[ratios.index])["ajcc_stage"]).to_numpy()
    test = compare_groups(ratios.to_numpy()[ratio_stage <= 1], ratios.to_numpy()[ratio_stage >= 2])
    for key, value in test.items():
        rows.append(_row(encoder_name, f"malignancy_{key}", "I-II vs III-IV", None, value, n=len(ratios)))

    # survival retrieval: best survival caption's days, slide median, patient mean -> C-index
    bins = survival_bins(p.survival_bins)
    surv_emb = encode_text(list(bins["caption"]))
    tile_days = bins["days"].to_numpy()[(x[keep] @ surv_emb.T).argmax(axis=1)]
    slide_days = pd.Series(tile_days).groupby(tiles.slide[keep]).median()
    patient_days = slide_days.groupby(slide_case.loc[slide_days.index].to_numpy()).mean()
    surv = clin.reindex(patient_days.index)
    if {"os_days", "os_event"} <= set(surv.columns):
        c = survival_cindex(patient_days.to_numpy(), surv["os_days"].to_numpy(float), surv["os_event"].to_numpy(float))
        rows.append(_row(encoder_name, "survival_cindex", "all", None, c, n=len(patient_days)))

    maps = {}
    for slide_id in np.unique(tiles.slide):
        m = tiles.slide == slide_id
        maps[str(slide_id)] = {
            "coords": tiles.coords[m],
            "p_high": stage_probs[m, 2:].sum(axis=1),
            "high": high[m],
            "background": background[m],
        }
    return pd.DataFrame(rows, columns=list(METRIC_COLUMNS)), maps


def _stage_index(values: pd.Series) -> pd.Series:
    """Clinical stage ("Stage III", "III", "stage IIIA") -> 0..3 (NaN when missing)."""
    from slidesnake.data.captions import STAGES, _stage

    def one(v):
        text = _stage(v)
        return float(STAGES.index(text.split()[-1])) if text else math.nan

    return pd.Series([one(v) for v in values], index=values.index, dtype=float)


def write_maps(path: str, maps: dict[str, dict[str, np.ndarray]]) -> None:
    """Per-slide high-malignancy maps in one h5 (a group per slide), atomically."""
    import h5py

    from slidesnake.io.atomic import atomic_path

    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            for slide_id, m in maps.items():
                g = f.create_group(slide_id)
                for key, value in m.items():
                    g.create_dataset(key, data=np.asarray(value))


def plot_maps(path: str, maps: dict[str, dict[str, np.ndarray]], title: str) -> None:
    """One panel per test slide: tiles coloured by P(stage III/IV), high-malignancy tiles outlined."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from slidesnake.io.atomic import atomic_path

    n = max(1, len(maps))
    cols = min(4, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (slide_id, m) in zip(axes.flat, sorted(maps.items())):
        xy = m["coords"]
        tissue = ~m["background"]
        ax.scatter(xy[tissue, 0], -xy[tissue, 1], c=m["p_high"][tissue], cmap="magma", vmin=0, vmax=1, s=6, marker="s")
        ax.scatter(xy[m["high"], 0], -xy[m["high"], 1], facecolors="none", edgecolors="cyan", s=10, linewidths=0.4)
        ratio = m["high"].sum() / max(1, tissue.sum())
        ax.set_title(f"{slide_id}\nhigh-malignancy {ratio:.2f}", fontsize=7)
        ax.set_aspect("equal")
    fig.suptitle(title, fontsize=9)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


def run_retrieval(
    encoder_source: str,
    feature_files: list[str],
    captions_parquet: str,
    clinical_parquet: str,
    folds_csv: str,
    sheet_tsv: str,
    fold: int,
    out_metrics: str,
    out_maps: str | None = None,
    out_figure: str | None = None,
    *,
    text_h5: str | None = None,
    task: tuple[str, dict] | None = None,
    params: RetrievalParams | None = None,
    device: str = "auto",
) -> pd.DataFrame:
    """Evaluate one encoder on the test slides of ``fold`` from the pipeline's files and write
    ``metrics.csv`` (and the malignancy maps); features files are named ``{slide_id}.h5``."""
    from pathlib import Path

    from slidesnake.device import select_device
    from slidesnake.features.encoders import load_encoder
    from slidesnake.io.atomic import write_csv
    from slidesnake.sheet import read_sheet
    from slidesnake.train.contrastive import read_fold

    sheet = read_sheet(sheet_tsv)
    slide_cases = dict(zip(sheet["slide_id"], sheet["case_id"]))
    split = read_fold(folds_csv, fold)
    files = {Path(p).stem: str(p) for p in feature_files if split.get(Path(p).stem) == "test"}
    tiles = read_test_tiles(files, slide_cases)
    encoder = load_encoder(encoder_source, select_device(device))
    name = encoder.spec.name

    @torch.no_grad()
    def encode_text(texts: list[str]) -> np.ndarray:
        out = [encoder.encode_text(texts[i : i + 256]).float().cpu().numpy() for i in range(0, len(texts), 256)]
        return np.concatenate(out) if out else np.zeros((0, encoder.spec.dim), np.float32)

    class_text, slide_labels = None, None
    if text_h5 and task is not None:
        from slidesnake.models.vl.zeroshot import read_text_bank, reorder
        from slidesnake.tasks import class_names, load_task_labels

        task_obj, labels = load_task_labels(task[0], task[1], sheet_tsv, clinical=clinical_parquet)
        classes = class_names(task_obj, labels)
        bank = reorder(read_text_bank(text_h5), classes)
        class_text = np.stack([bank.embeddings[bank.class_index == c].mean(axis=0) for c in range(len(classes))])
        class_text /= np.linalg.norm(class_text, axis=1, keepdims=True)
        index = {c: i for i, c in enumerate(classes)}
        slide_labels = {s: index[str(v)] for s, v in zip(labels["slide_id"], labels["label"]) if str(v) in index}
    metrics, maps = evaluate_retrieval(
        name,
        tiles,
        encode_text,
        encoder.logit_scale,
        pd.read_parquet(captions_parquet),
        pd.read_parquet(clinical_parquet),
        class_text,
        slide_labels,
        params,
    )
    write_csv(out_metrics, metrics)
    if out_maps:
        write_maps(out_maps, maps)
    if out_figure:
        plot_maps(out_figure, maps, f"{name}: P(stage III/IV) per tile, fold {fold} test slides")
    return metrics


def comparison_table(metrics_files: list[str]) -> pd.DataFrame:
    """The encoders' metrics side by side: one row per (metric, group, k), a value column per encoder
    (an undefined statistic, e.g. a t-test on a group of one, stays as a NaN row)."""
    frames = [pd.read_csv(p) for p in metrics_files]
    long = pd.concat(frames, ignore_index=True)
    long["k"] = long["k"].fillna(-1)
    # groupby + unstack, not pivot_table: pivot_table drops all-NaN rows (or, with dropna=False, fills
    # in every metric x group x k combination)
    keys = ["metric", "group", "k", "encoder"]
    wide = long.groupby(keys, sort=True)["value"].first().unstack("encoder").reset_index()
    wide["k"] = wide["k"].replace(-1, np.nan)
    wide.columns.name = None
    return wide
