"""Train one MIL model on one fold: AdamW, class weighting, early stopping and checkpoint choice on val only.

The test split is touched once, after training, to write predictions; it never influences which
epoch is kept (the leakage PathGene's code has, selecting checkpoints on the test fold).
"""

from __future__ import annotations

import copy
import logging
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from slidesnake.evaluate.metrics import target_array, task_metrics
from slidesnake.features.device import select_device
from slidesnake.io.atomic import atomic_path, write_csv, write_parquet
from slidesnake.models.mil import MODELS, MILModel, build_model
from slidesnake.train.data import Bag, bag_length, feature_dim, load_bag
from slidesnake.train.losses import (
    class_weights,
    positive_weights,
    survival_bins,
    survival_risk,
    task_loss,
    time_to_bin,
)
from slidesnake.train.tasks import Task, class_names

log = logging.getLogger(__name__)

PRIMARY_METRIC = {"classification": "auc", "multilabel": "mean_auc", "survival": "c_index"}


class TrainingDataError(ValueError):
    """The fold has no usable training slides, or a slide has no feature file."""


@dataclass
class TrainParams:
    """Training hyper-parameters (issue 6 defaults: AdamW, lr 1e-4, wd 1e-5, dropout 0.25).

    max_instances caps a training bag (random subset per step); cache_mb bounds the bags kept in memory
    between epochs; num_threads > 0 caps torch CPU threads (match the rule's ``threads:``; 0 = torch
    default); model_kwargs go to the model constructor (hidden sizes, heads, ...).
    """

    epochs: int = 50
    patience: int = 10
    lr: float = 1e-4
    weight_decay: float = 1e-5
    dropout: float = 0.25
    seed: int = 1
    max_instances: int = 8192
    class_weighting: bool = True
    device: str = "auto"
    cache_mb: int = 2048
    num_threads: int = 0
    model_kwargs: dict[str, Any] = field(default_factory=dict)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch so that a fold trains identically on rerun."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class _BagStore:
    """Loads bags on demand and keeps them while the total stays under a memory budget."""

    def __init__(self, paths: dict[str, str], input_kind: str, cache_mb: int) -> None:
        self.paths, self.input_kind = paths, input_kind
        self.budget = cache_mb * 2**20
        self.used = 0
        self.cache: dict[str, Bag] = {}

    def __getitem__(self, slide_id: str) -> Bag:
        if slide_id in self.cache:
            return self.cache[slide_id]
        bag = load_bag(self.paths[slide_id], self.input_kind)
        size = bag.features.element_size() * bag.features.nelement()
        if self.used + size <= self.budget:
            self.cache[slide_id] = bag
            self.used += size
        return bag


def _usable_slides(table: pd.DataFrame, paths: dict[str, str]) -> pd.DataFrame:
    """Drop slides without a features file or with zero instances (no tissue), logging each."""
    keep = []
    for slide_id in table["slide_id"]:
        if slide_id not in paths:
            log.warning("slide %s has a label but no features file: skipped", slide_id)
            keep.append(False)
        elif bag_length(paths[slide_id]) == 0:
            log.info("slide %s has no patches (no tissue?): skipped", slide_id)
            keep.append(False)
        else:
            keep.append(True)
    return table[np.asarray(keep, dtype=bool)].reset_index(drop=True)


def _targets(task: Task, table: pd.DataFrame, edges: np.ndarray | None) -> dict[str, torch.Tensor]:
    """The loss target per slide: class index, gene vector, or (time bin, event)."""
    if task.kind == "classification":
        values = table["target"].to_numpy(np.int64).reshape(-1, 1)
    elif task.kind == "multilabel":
        values = table[task.target_columns].to_numpy(np.float32)
    else:
        values = np.stack([time_to_bin(table["time"].to_numpy(), edges), table["event"].to_numpy()], axis=1)
    return {sid: torch.as_tensor(v) for sid, v in zip(table["slide_id"], values)}


def _forward_loss(
    model: MILModel, task: Task, bag: Bag, target: torch.Tensor, weight: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Task loss on slide logits + auxiliary branches; returns (loss, slide logits)."""
    label = target.view(-1)[:1] if task.kind == "classification" else None
    out = model(bag.features, coords=bag.coords, mask=bag.mask, label=label)
    loss = model.bag_weight * task_loss(task.kind, out.logits.view(1, -1), target, weight)
    if out.extra_logits is not None:
        loss = loss + task_loss(task.kind, out.extra_logits.view(-1, out.logits.numel()), target, weight)
    if out.aux_loss is not None:
        loss = loss + out.aux_loss
    return loss, out.logits.view(-1)


def _scores(task: Task, logits: torch.Tensor) -> np.ndarray:
    """Logits -> class probabilities, per-gene probabilities, or a scalar risk."""
    if task.kind == "classification":
        return torch.softmax(logits, dim=-1).cpu().numpy()
    if task.kind == "multilabel":
        return torch.sigmoid(logits).cpu().numpy()
    return survival_risk(logits).view(1).cpu().numpy()


def _evaluate(
    model: MILModel,
    task: Task,
    table: pd.DataFrame,
    store: _BagStore,
    targets: dict[str, torch.Tensor],
    weight: torch.Tensor | None,
    device: torch.device,
) -> tuple[float, np.ndarray]:
    """Mean loss and stacked scores over the slides of ``table`` (eval mode, no gradients)."""
    model.eval()
    losses, scores = [], []
    with torch.inference_mode():
        for slide_id in table["slide_id"]:
            loss, logits = _forward_loss(model, task, store[slide_id].to(device), targets[slide_id].to(device), weight)
            losses.append(float(loss))
            scores.append(_scores(task, logits))
    return (float(np.mean(losses)) if losses else float("nan")), np.stack(scores) if scores else np.zeros((0,))


def _score_columns(task: Task, classes: list[str]) -> list[str]:
    if task.kind == "classification":
        return [f"prob_{c}" for c in classes]
    if task.kind == "multilabel":
        return [f"prob_{g}" for g in task.genes]
    return ["risk"]


def train_fold(
    task: Task,
    model_name: str,
    features: dict[str, str],
    labels: pd.DataFrame,
    folds: pd.DataFrame,
    fold: int,
    params: TrainParams,
    out_dir: str,
    hierarchy: dict[str, str] | None = None,
) -> None:
    """Train ``model_name`` on fold ``fold`` and write model.pt, history.csv, predictions.parquet to ``out_dir``.

    The kept checkpoint is the epoch with the lowest validation loss; training stops after
    ``params.patience`` epochs without improvement. Slides without patches are skipped.
    """
    seed_everything(params.seed)
    if params.num_threads > 0:
        torch.set_num_threads(params.num_threads)
    device = select_device(params.device)
    input_kind = MODELS[model_name].input_kind if model_name in MODELS else "flat"
    paths = hierarchy if input_kind == "hierarchy" else features
    if paths is None:
        raise TrainingDataError(f"model {model_name} needs hierarchy (hier_5x_20x) files; none were given")
    split = folds.loc[folds["fold"] == fold, ["slide_id", "split"]]
    table = labels.merge(split, on="slide_id", how="inner")
    table = _usable_slides(table, paths)
    parts = {name: table[table["split"] == name].reset_index(drop=True) for name in ("train", "val", "test")}
    if parts["train"].empty:
        raise TrainingDataError(f"fold {fold} of task {task.name} has no training slides with patches")
    if parts["val"].empty:
        log.warning("fold %d has no validation slides: the last epoch is kept", fold)

    classes = class_names(task, labels) if task.kind == "classification" else []
    edges = None
    if task.kind == "survival":
        edges = survival_bins(parts["train"]["time"].to_numpy(), parts["train"]["event"].to_numpy(), task.n_bins)
    n_outputs = {
        "classification": len(classes),
        "multilabel": len(task.genes),
        "survival": (0 if edges is None else len(edges) + 1),
    }[task.kind]
    targets = _targets(task, table, edges)
    weight = None
    if params.class_weighting and task.kind == "classification":
        weight = class_weights(parts["train"]["target"].to_numpy(), n_outputs).to(device)
    elif params.class_weighting and task.kind == "multilabel":
        weight = positive_weights(parts["train"][task.target_columns].to_numpy()).to(device)

    in_dim = feature_dim(paths[table["slide_id"].iloc[0]])
    model_kwargs = {"dropout": params.dropout, **params.model_kwargs}
    model = build_model(model_name, in_dim, n_outputs, **model_kwargs).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=params.lr, weight_decay=params.weight_decay)
    store = _BagStore(paths, input_kind, params.cache_mb)
    generator = torch.Generator().manual_seed(params.seed)
    rng = np.random.default_rng(params.seed)
    metrics_fn = task_metrics(task)
    metric_name = PRIMARY_METRIC[task.kind]

    history, best_loss, best_state, best_epoch, stale = [], float("inf"), None, -1, 0
    for epoch in tqdm(range(params.epochs), desc=f"{model_name} fold {fold}", disable=None):
        model.train()
        train_losses = []
        for slide_id in parts["train"]["slide_id"].to_numpy()[rng.permutation(len(parts["train"]))]:
            bag = model.training_bag(store[slide_id], params.max_instances, generator).to(device)
            loss, _ = _forward_loss(model, task, bag, targets[slide_id].to(device), weight)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            train_losses.append(float(loss.detach()))
        val_loss, val_scores = _evaluate(model, task, parts["val"], store, targets, weight, device)
        val_metric = float("nan")
        if len(val_scores):
            val_metric = metrics_fn(target_array(task, parts["val"]), val_scores)[metric_name]
        history.append(
            {
                "epoch": epoch,
                "train_loss": float(np.mean(train_losses)),
                "val_loss": val_loss,
                f"val_{metric_name}": val_metric,
            }
        )
        if parts["val"].empty or val_loss < best_loss:
            best_loss, best_state, best_epoch, stale = val_loss, copy.deepcopy(model.state_dict()), epoch, 0
        else:
            stale += 1
            if stale >= params.patience:
                log.info("early stop at epoch %d (best val loss %.4f at epoch %d)", epoch, best_loss, best_epoch)
                break
    model.load_state_dict(best_state)

    rows = []
    for name in ("val", "test"):
        if parts[name].empty:
            continue
        _, scores = _evaluate(model, task, parts[name], store, targets, weight, device)
        frame = parts[name].drop(columns=["split"]).assign(fold=fold, split=name)
        frame = frame[
            [
                "slide_id",
                "case_id",
                "fold",
                "split",
                *[c for c in frame.columns if c not in ("slide_id", "case_id", "fold", "split")],
            ]
        ]
        score_frame = pd.DataFrame(scores.reshape(len(frame), -1), columns=_score_columns(task, classes))
        rows.append(pd.concat([frame.reset_index(drop=True), score_frame], axis=1))
    predictions = pd.concat(rows, ignore_index=True)

    out = Path(out_dir)
    checkpoint = {
        "state_dict": {k: v.cpu() for k, v in best_state.items()},
        "model": model_name,
        "in_dim": in_dim,
        "n_outputs": n_outputs,
        "model_kwargs": model_kwargs,
        "task": asdict(task),
        "classes": classes,
        "survival_edges": None if edges is None else edges.tolist(),
        "best_epoch": best_epoch,
        "params": asdict(params),
    }
    with atomic_path(out / "model.pt") as tmp:
        torch.save(checkpoint, tmp)
    write_csv(out / "history.csv", pd.DataFrame(history))
    write_parquet(out / "predictions.parquet", predictions)
    log.info(
        "fold %d: best epoch %d, val loss %.4f, %d test predictions",
        fold,
        best_epoch,
        best_loss,
        (predictions["split"] == "test").sum(),
    )
