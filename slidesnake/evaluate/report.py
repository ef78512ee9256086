"""What the HTML report shows, bounded so it opens at 1,000 slides: which heatmaps go in, JPEG copies of
the figures, and the metrics and QC tables as HTML (Snakemake's report shows HTML inline; CSV/TSV files
are only downloads).

The full-size PNGs and the CSV/TSV tables stay files under results/; the report holds small copies.
"""

from __future__ import annotations

import html
import logging
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from slidesnake.evaluate.figures import pooled_test_rows, report_jpeg
from slidesnake.io.atomic import atomic_path

log = logging.getLogger(__name__)

HEATMAP_MODES = ("top", "all", "none")
FIGURE_RE = re.compile(r"^(?P<slide>.+)\.(?P<kind>heatmap|top\d+)\.png$")

TABLE_CSS = (
    "body{font-family:sans-serif;font-size:13px;margin:8px}"
    "table{border-collapse:collapse}th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}"
    "th{background:#f0f0f0;position:sticky;top:0}td:first-child,th:first-child{text-align:left}"
    "tr:nth-child(even){background:#fafafa}caption{text-align:left;font-weight:bold;margin:4px 0}"
)


def confidence(test: pd.DataFrame) -> pd.Series:
    """Per test row, how sure the model is: the largest class (or gene) probability, or the risk."""
    probs = [c for c in test.columns if c.startswith("prob_")]
    if probs:
        return test[probs].max(axis=1)
    if "risk" in test.columns:
        return test["risk"].astype(float)
    return pd.Series(np.zeros(len(test)), index=test.index)


def report_slides(prediction_files: Sequence[str | os.PathLike], mode: str, n: int) -> list[tuple[int, str]]:
    """(fold, slide_id) pairs whose heatmaps go into the report for one task-model.

    ``all``: every test slide; ``top``: the ``n`` test slides the model is most confident about (largest
    class probability, or highest risk), ties by slide id; ``none``: no slide.
    """
    if mode not in HEATMAP_MODES:
        raise ValueError(f"config key 'report.heatmaps' is {mode!r}; allowed values: {', '.join(HEATMAP_MODES)}")
    if mode == "none":
        return []
    test = pooled_test_rows(prediction_files)
    if test.empty:
        return []
    test = test.assign(_confidence=confidence(test)).sort_values(["_confidence", "slide_id"], ascending=[False, True])
    test = test.drop_duplicates("slide_id")
    if mode == "top":
        test = test.head(n)
    return [(int(fold), str(slide)) for fold, slide in zip(test["fold"], test["slide_id"])]


def write_report_heatmaps(
    heatmap_dirs: Mapping[int, str | os.PathLike],
    chosen: Sequence[tuple[int, str]],
    out_dir: str | os.PathLike,
    *,
    max_px: int = 1024,
    quality: int = 85,
) -> list[Path]:
    """JPEG copies of the chosen slides' heatmap and top-k figures (from their fold's heatmap folder)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for fold, slide in chosen:
        folder = Path(heatmap_dirs[fold])
        figures = sorted(p for p in folder.glob(f"{slide}.*.png") if FIGURE_RE.match(p.name))
        if not figures:
            log.warning("no heatmap figures for slide %s in %s", slide, folder)
        for png in figures:
            kind = FIGURE_RE.match(png.name)["kind"]
            jpg = out / f"{slide}.{kind}.jpg"
            report_jpeg(png, jpg, max_px, quality)
            written.append(jpg)
    return written


def write_report_qc(
    qc_pngs: Sequence[str | os.PathLike], out_dir: str | os.PathLike, *, max_px: int = 1024, quality: int = 85
) -> list[Path]:
    """JPEG copies of every slide's QC picture, named ``{slide_id}.jpg``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for png in qc_pngs:
        jpg = out / f"{Path(png).stem}.jpg"
        report_jpeg(png, jpg, max_px, quality)
        written.append(jpg)
    return written


def html_table(table: pd.DataFrame, title: str, out_html: str | os.PathLike, digits: int = 3) -> None:
    """A standalone HTML page with ``table`` (numbers rounded to ``digits``), for the report to show inline."""
    body = table.to_html(index=False, float_format=lambda v: f"{v:.{digits}f}", na_rep="–", border=0)
    page = (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{TABLE_CSS}</style></head><body><h3>{html.escape(title)}</h3>{body}</body></html>"
    )
    with atomic_path(out_html) as tmp:
        Path(tmp).write_text(page, encoding="utf-8")


def metrics_table(metric_files: Mapping[tuple[str, str, str], str | os.PathLike]) -> pd.DataFrame:
    """Every (task, model, encoder) metrics.csv in one table, with those three as the leading columns."""
    frames = []
    for (task, model, encoder), path in metric_files.items():
        frame = pd.read_csv(path, dtype={"fold": str})
        frames.append(frame.assign(task=task, model=model, encoder=encoder))
    if not frames:
        return pd.DataFrame(columns=["task", "model", "encoder", "fold"])
    table = pd.concat(frames, ignore_index=True)
    lead = ["task", "model", "encoder", "fold"]
    return table[lead + [c for c in table.columns if c not in lead]]
