"""Which class descriptions a HiVE-MIL prediction rests on (the seed's interpretability notebook as a table).

Per test slide: the predicted class, its top coarse (5x) and fine (20x) descriptions ranked by their share
of the class logit (γ·top-k mean similarity; a class's logit is the mean of its coarse plus the mean of
its fine scores), each fine description with the coarse one it sits under, and the slide's Hit Ratio@2.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import pandas as pd
import torch

from slidesnake.errors import InputError
from slidesnake.io.checkpoint import load_checkpoint
from slidesnake.models import registry
from slidesnake.models.vl.hier_prompts import N_COARSE, N_FINE_PER_COARSE
from slidesnake.train.data import load_bag
from slidesnake.train.text_inputs import text_inputs_from_checkpoint


class DescriptionError(InputError):
    """A model.pt whose model has no per-description scores (only HiVE-MIL has them)."""


def slide_descriptions(model: Any, prompts: Any, classes: list[str], bag: Any, top: int = 2) -> dict[str, Any]:
    """One row: predicted class, its ``top`` coarse and fine descriptions with scores, and the Hit Ratio@2."""
    out = model.explain(bag.features, mask=bag.mask, parent_features=bag.parent_features)
    c = int(out["logits"].argmax())
    row: dict[str, Any] = {"predicted": classes[c], "hit_ratio_at_2": float(out["hit_ratio"])}
    coarse = out["coarse"][c * N_COARSE : (c + 1) * N_COARSE]
    per_fine = N_COARSE * N_FINE_PER_COARSE
    fine = out["fine"][c * per_fine : (c + 1) * per_fine]
    for r, k in enumerate(coarse.argsort(descending=True)[:top].tolist(), 1):
        row[f"coarse_{r}"], row[f"coarse_{r}_score"] = prompts.coarse[c][k], float(coarse[k])
    for r, i in enumerate(fine.argsort(descending=True)[:top].tolist(), 1):
        k, j = divmod(i, N_FINE_PER_COARSE)
        row[f"fine_{r}"], row[f"fine_{r}_score"] = prompts.fine[c][k][j], float(fine[i])
        row[f"fine_{r}_under"] = prompts.coarse[c][k]
    return row


def description_table(
    model_pts: Mapping[int, str | os.PathLike],
    splits_csv: str | os.PathLike,
    hierarchy: Mapping[str, str],
    top: int = 2,
) -> pd.DataFrame:
    """Rows per test slide of each fold (``model_pts``: fold -> its model.pt), scored by that fold's model."""
    splits = pd.read_csv(splits_csv, dtype={"slide_id": str, "case_id": str})
    rows = []
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
                row = slide_descriptions(model, prompts, record["classes"], bag, top)
            rows.append({"slide_id": slide_id, "case_id": case_id, "fold": fold, **row})
    return pd.DataFrame(rows)
