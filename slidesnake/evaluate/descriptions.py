"""Which class descriptions a HiVE-MIL prediction rests on (the seed's interpretability notebook as a table).

Per test slide: the predicted class, its top coarse (5x) and fine (20x) descriptions ranked by their share
of the class logit (γ·top-k mean similarity; a class's logit is the mean of its coarse plus the mean of
its fine scores), each fine description with the coarse one it sits under, and the slide's Hit Ratio@2.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure

from slidesnake.errors import InputError
from slidesnake.evaluate.figures import save_figure
from slidesnake.io.checkpoint import load_checkpoint
from slidesnake.models import registry
from slidesnake.models.vl.hier_prompts import N_COARSE, N_FINE_PER_COARSE
from slidesnake.train.data import load_bag
from slidesnake.train.text_inputs import text_inputs_from_checkpoint


class DescriptionError(InputError):
    """A model.pt whose model has no per-description scores (only HiVE-MIL has them)."""


def slide_descriptions(
    model: Any, prompts: Any, classes: list[str], bag: Any, top: int = 2
) -> tuple[dict[str, Any], pd.DataFrame]:
    """One slide's row (predicted class, its ``top`` coarse and fine descriptions with scores, the Hit Ratio@2)
    and every description score of the predicted class (rows: level, coarse index, fine index, term, score)."""
    out = model.explain(bag.features, mask=bag.mask, parent_features=bag.parent_features)
    c = int(out["logits"].argmax())
    confidence = float(torch.softmax(out["logits"].float(), 0)[c])
    row: dict[str, Any] = {"predicted": classes[c], "confidence": confidence, "hit_ratio_at_2": float(out["hit_ratio"])}
    coarse = out["coarse"][c * N_COARSE : (c + 1) * N_COARSE]
    per_fine = N_COARSE * N_FINE_PER_COARSE
    fine = out["fine"][c * per_fine : (c + 1) * per_fine]
    for r, k in enumerate(coarse.argsort(descending=True)[:top].tolist(), 1):
        row[f"coarse_{r}"], row[f"coarse_{r}_score"] = prompts.coarse[c][k], float(coarse[k])
    for r, i in enumerate(fine.argsort(descending=True)[:top].tolist(), 1):
        k, j = divmod(i, N_FINE_PER_COARSE)
        row[f"fine_{r}"], row[f"fine_{r}_score"] = prompts.fine[c][k][j], float(fine[i])
        row[f"fine_{r}_under"] = prompts.coarse[c][k]
    scores = [("coarse", k, -1, prompts.coarse[c][k], float(coarse[k])) for k in range(N_COARSE)]
    scores += [
        ("fine", k, j, prompts.fine[c][k][j], float(fine[k * N_FINE_PER_COARSE + j]))
        for k in range(N_COARSE)
        for j in range(N_FINE_PER_COARSE)
    ]
    return row, pd.DataFrame(scores, columns=["level", "coarse_index", "fine_index", "description", "score"])


def describe(
    model_pts: Mapping[int, str | os.PathLike],
    splits_csv: str | os.PathLike,
    hierarchy: Mapping[str, str],
    top: int = 2,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per test slide of each fold (``model_pts``: fold -> its model.pt), scored by that fold's model: the
    description table (one row per slide) and the long table of every description score of each slide's
    predicted class (for :func:`description_figure`)."""
    splits = pd.read_csv(splits_csv, dtype={"slide_id": str, "case_id": str})
    rows, scores = [], []
    for fold, model_pt in sorted(model_pts.items()):
        record = load_checkpoint(model_pt)
        entry = registry.get(record["model"])
        if not hasattr(entry.cls, "explain"):
            raise DescriptionError(
                f"{model_pt}: model {record['model']!r} has no per-description scores; description tables are "
                "made for hivemil only"
            )
        text = text_inputs_from_checkpoint(record)  # the text tower and the descriptions model.pt recorded
        model = registry.from_checkpoint(record, **text)
        prompts = text["prompts"]
        test = splits[(splits["fold"] == fold) & (splits["split"] == "test")]
        for slide_id, case_id in zip(test["slide_id"], test["case_id"]):
            if slide_id not in hierarchy:
                continue
            bag = load_bag(hierarchy[slide_id], "hierarchy", coords=False, parent_features=True)
            if len(bag) == 0:
                continue
            with torch.inference_mode():
                row, slide_scores = slide_descriptions(model, prompts, record["classes"], bag, top)
            rows.append({"slide_id": slide_id, "case_id": case_id, "fold": fold, **row})
            scores.append(slide_scores.assign(slide_id=slide_id, fold=fold, predicted=row["predicted"]))
    long = pd.concat(scores, ignore_index=True) if scores else pd.DataFrame(columns=["slide_id", "fold", "score"])
    return pd.DataFrame(rows), long


def description_table(
    model_pts: Mapping[int, str | os.PathLike],
    splits_csv: str | os.PathLike,
    hierarchy: Mapping[str, str],
    top: int = 2,
) -> pd.DataFrame:
    """The description table of :func:`describe`: one row per test slide of each fold."""
    return describe(model_pts, splits_csv, hierarchy, top)[0]


def description_figure(
    table: pd.DataFrame, scores: pd.DataFrame, out_png: str | os.PathLike, n_slides: int = 4
) -> None:
    """Bars of every description score of the predicted class, for the ``n_slides`` test slides the model is
    most confident about: each 5x (coarse) description, its three 20x (fine) descriptions indented under it;
    the best coarse and fine bars are dark. A score is γ times the description's top-k mean similarity."""
    ranked = table.sort_values(["confidence", "slide_id"], ascending=[False, True])
    chosen = ranked.drop_duplicates("slide_id").head(n_slides)  # a slide tested in several repeats: its best
    fig = Figure(figsize=(6.2 * max(len(chosen), 1), 0.32 * (N_COARSE * (1 + N_FINE_PER_COARSE)) + 1.6))
    if chosen.empty:
        fig.text(0.5, 0.5, "no test slide was scored", ha="center", va="center")
    for i, slide in enumerate(chosen.itertuples()):
        ax = fig.add_subplot(1, len(chosen), i + 1)
        part = scores[(scores["slide_id"] == slide.slide_id) & (scores["fold"] == slide.fold)]
        labels, values, colours = [], [], []
        for k in range(N_COARSE):
            coarse = part[(part["level"] == "coarse") & (part["coarse_index"] == k)]
            fine = part[(part["level"] == "fine") & (part["coarse_index"] == k)].sort_values("fine_index")
            for level, rows in (("coarse", coarse), ("fine", fine)):
                best = part[part["level"] == level]["score"].max()
                for r in rows.itertuples():
                    labels.append(_label(r.description) if level == "coarse" else "↳ " + _label(r.description))
                    values.append(r.score)
                    colours.append(("#1f4e79" if r.score == best else "#7fa7cf") if level == "coarse" else
                                   ("#8c2d04" if r.score == best else "#f4a582"))  # fmt: skip
        y = np.arange(len(labels))[::-1]
        ax.barh(y, values, color=colours)
        ax.set_yticks(y, labels, fontsize=7)
        ax.axvline(0.0, color="0.5", linewidth=0.8)
        ax.set_xlabel("description score (γ · top-k mean similarity)\nblue: 5x (coarse), orange ↳: its 20x (fine)")
        ax.set_title(
            f"{slide.slide_id} (repeat {slide.fold})\npredicted {slide.predicted} (p = {slide.confidence:.2f}), "
            f"Hit Ratio@2 {slide.hit_ratio_at_2:.2f}",
            fontsize=8,
        )
    save_figure(fig, out_png, dpi=100)


def _label(description: str, width: int = 48) -> str:
    """A description's term (the text before its explanation), cut to ``width`` characters."""
    term = description.split(":")[0].strip()
    return term if len(term) <= width else term[: width - 1] + "…"
