"""Report assets: JPEG copies bounded in size, the heatmap choice per task-model, tables as HTML."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from slidesnake.evaluate.figures import report_jpeg
from slidesnake.evaluate.report import (
    html_table,
    metrics_table,
    report_slides,
    write_report_heatmaps,
    write_report_qc,
)


def _png(path, size=(3000, 1500), alpha=True):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, size=(size[1], size[0], 4 if alpha else 3), dtype=np.uint8)
    if alpha:
        pixels[:, : size[0] // 2, 3] = 0  # left half transparent
    Image.fromarray(pixels).save(path)
    return path


def test_report_jpeg_bounds_size_and_flattens_alpha(tmp_path):
    png = _png(tmp_path / "big.png")
    report_jpeg(png, tmp_path / "big.jpg", max_px=1024, quality=80)
    with Image.open(tmp_path / "big.jpg") as image:
        assert image.format == "JPEG" and image.mode == "RGB" and image.size == (1024, 512)
        left = np.asarray(image)[:, :400]
    assert left.mean() > 250  # transparent pixels are white, not black
    assert (tmp_path / "big.jpg").stat().st_size < (tmp_path / "big.png").stat().st_size / 4
    small = _png(tmp_path / "small.png", size=(300, 200), alpha=False)
    report_jpeg(small, tmp_path / "small.jpg", max_px=1024)
    assert Image.open(tmp_path / "small.jpg").size == (300, 200)  # never upscaled


def _predictions(tmp_path):
    files = []
    rows = [  # fold, slide, split, prob_a, prob_b
        (0, "S1", "test", 0.9, 0.1), (0, "S2", "test", 0.55, 0.45), (0, "S3", "train", 0.99, 0.01),
        (1, "S4", "test", 0.2, 0.8), (1, "S5", "test", 0.05, 0.95), (1, "S6", "val", 0.0, 1.0),
    ]  # fmt: skip
    for fold in (0, 1):
        frame = pd.DataFrame(
            [r for r in rows if r[0] == fold], columns=["fold", "slide_id", "split", "prob_a", "prob_b"]
        )
        frame["case_id"] = frame["slide_id"]
        path = tmp_path / f"fold{fold}.parquet"
        frame.to_parquet(path)
        files.append(path)
    return files


def test_report_slides_top_all_none(tmp_path):
    files = _predictions(tmp_path)
    assert report_slides(files, "top", 2) == [(1, "S5"), (0, "S1")]  # most confident test slides only
    assert report_slides(files, "all", 2) == [(1, "S5"), (0, "S1"), (1, "S4"), (0, "S2")]
    assert report_slides(files, "none", 2) == []
    with pytest.raises(ValueError, match="report.heatmaps"):
        report_slides(files, "some", 2)


def test_survival_predictions_rank_by_risk(tmp_path):
    frame = pd.DataFrame({"fold": 0, "slide_id": ["A", "B", "C"], "case_id": ["A", "B", "C"],
                          "split": "test", "risk": [0.1, 2.0, 0.5]})  # fmt: skip
    frame.to_parquet(tmp_path / "p.parquet")
    assert report_slides([tmp_path / "p.parquet"], "top", 2) == [(0, "B"), (0, "C")]


def test_write_report_heatmaps_and_qc(tmp_path):
    for fold, slide in ((0, "S1"), (1, "S5"), (1, "S4")):
        folder = tmp_path / f"fold{fold}"
        folder.mkdir(exist_ok=True)
        _png(folder / f"{slide}.heatmap.png", size=(2400, 1800))
        _png(folder / f"{slide}.top8.png", size=(2100, 300))
    out = write_report_heatmaps({0: tmp_path / "fold0", 1: tmp_path / "fold1"}, [(1, "S5"), (0, "S1")],
                                tmp_path / "report", max_px=512)  # fmt: skip
    assert sorted(p.name for p in out) == ["S1.heatmap.jpg", "S1.top8.jpg", "S5.heatmap.jpg", "S5.top8.jpg"]
    assert max(Image.open(tmp_path / "report/S1.heatmap.jpg").size) == 512
    qc = write_report_qc([tmp_path / "fold1/S4.heatmap.png"], tmp_path / "qc", max_px=256)
    assert [p.name for p in qc] == ["S4.heatmap.jpg"] and max(Image.open(qc[0]).size) == 256


def test_tables_as_html(tmp_path):
    for name, auc in (("abmil", 0.91234), ("meanpool", 0.8)):
        pd.DataFrame({"fold": ["0", "mean"], "auc": [auc, auc]}).to_csv(tmp_path / f"{name}.csv", index=False)
    table = metrics_table({("subtype", "abmil", "tiny-clip"): tmp_path / "abmil.csv",
                           ("subtype", "meanpool", "tiny-clip"): tmp_path / "meanpool.csv"})  # fmt: skip
    assert list(table.columns[:4]) == ["task", "model", "encoder", "fold"] and len(table) == 4
    html_table(table, "Metrics <all>", tmp_path / "m.html")
    page = (tmp_path / "m.html").read_text()
    assert "<table" in page and "0.912" in page and "meanpool" in page and "Metrics &lt;all&gt;" in page
    assert page.count("<tr") == 5  # header + 4 rows
