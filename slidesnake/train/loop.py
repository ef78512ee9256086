"""Train one MIL model on one fold: AdamW, class balancing, early stopping and checkpoint choice on val only.

The test split is touched once, after training, to write predictions; it never influences which
epoch is kept (the leakage PathGene's code has, selecting checkpoints on the test fold). The loop
loads exactly the inputs the model's registry entry declares, and logs one line per epoch (losses,
metric, seconds, ETA) so that progress is readable in the job's log file.
"""

from __future__ import annotations

import copy
import logging
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from slidesnake.device import select_device
from slidesnake.errors import ConfigError, InputError
from slidesnake.evaluate.metrics import target_array, task_metrics
from slidesnake.io.atomic import write_csv, write_parquet
from slidesnake.io.checkpoint import load_checkpoint, save_checkpoint
from slidesnake.models import registry
from slidesnake.models.mil import MILModel
from slidesnake.tasks import Task, class_names
from slidesnake.train.data import Bag, bag_attrs, bag_length, feature_dim, load_bag
from slidesnake.train.losses import (
    class_weights,
    positive_weights,
    survival_bins,
    survival_risk,
    task_loss,
    time_to_bin,
)
from slidesnake.train.text_inputs import TEXT_INPUTS, text_inputs

log = logging.getLogger(__name__)

PRIMARY_METRIC = {"classification": "auc", "multilabel": "mean_auc", "survival": "c_index"}
BALANCE = ("weight", "sample", "none")
# inputs the bag loop reads: bags, and for vision-language bag models the training encoder's text tower and
# the task's class descriptions (slidesnake/train/text_inputs.py)
BAG_INPUTS = ("features", "coords", "hierarchy", *TEXT_INPUTS)


class TrainingDataError(InputError):
    """The fold has no usable training slides, or a slide has no feature file."""


@dataclass
class TrainParams:
    """Training hyper-parameters (issue 6 defaults: AdamW, lr 1e-4, wd 1e-5, dropout 0.25).

    max_instances caps a training bag (the model's ``training_bag`` view per step); balance counters
    class imbalance (config ``training.balance``): "weight" multiplies each bag's loss by its class's
    inverse-frequency weight (BCE pos_weight for mutations), "sample" draws training bags with
    class-balanced probabilities instead, "none" does neither; survival tasks are never balanced.
    cache_mb bounds the bags kept in memory between epochs; num_threads > 0 caps torch CPU threads
    (match the rule's ``threads:``; 0 = torch default); model_kwargs go to the model constructor.
    accumulate > 1 takes one optimiser step per that many bags (each bag's loss divided by it, and a
    last, partial step at the end of an epoch), as the Patch-GCN reference's gradient accumulation.
    """

    epochs: int = 50
    patience: int = 10
    lr: float = 1e-4
    weight_decay: float = 1e-5
    dropout: float = 0.25
    seed: int = 1
    max_instances: int = 8192
    balance: str = "weight"
    device: str = "auto"
    cache_mb: int = 2048
    num_threads: int = 0
    accumulate: int = 1
    model_kwargs: dict[str, Any] = field(default_factory=dict)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch so that a fold trains identically on rerun."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class _BagStore:
    """Loads bags on demand and keeps them while the total stays under a memory budget."""

    def __init__(
        self, paths: dict[str, str], input_kind: str, cache_mb: int, coords: bool = True, parents: bool = False
    ) -> None:
        self.paths, self.input_kind, self.coords, self.parents = paths, input_kind, coords, parents
        self.budget = cache_mb * 2**20
        self.used = 0
        self.cache: dict[str, Bag] = {}

    def __getitem__(self, slide_id: str) -> Bag:
        if slide_id in self.cache:
            return self.cache[slide_id]
        bag = load_bag(self.paths[slide_id], self.input_kind, coords=self.coords, parent_features=self.parents)
        size = sum(t.element_size() * t.nelement() for t in (bag.features, bag.parent_features) if t is not None)
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
    out = model(bag.features, coords=bag.coords, mask=bag.mask, label=label, **bag.model_inputs())
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


def _loss_weight(task: Task, balance: str, train: pd.DataFrame, n_outputs: int) -> torch.Tensor | None:
    """Class weights (classification) or BCE pos_weight (multilabel) when ``balance`` is "weight"."""
    if balance != "weight":
        return None
    if task.kind == "classification":
        return class_weights(train["target"].to_numpy(), n_outputs)
    if task.kind == "multilabel":
        return positive_weights(train[task.target_columns].to_numpy())
    return None


def _draw_weights(task: Task, balance: str, train: pd.DataFrame) -> np.ndarray | None:
    """Per-slide draw probabilities for class-balanced sampling (each class drawn equally often), or None."""
    if balance != "sample":
        return None
    if task.kind != "classification":
        log.warning(
            "training.balance: sample is defined for single-label classification; the %s task is not balanced",
            task.kind,
        )
        return None
    target = train["target"].to_numpy(int)
    p = 1.0 / np.bincount(target)[target]
    return p / p.sum()


def _log_epoch(
    model_name: str, fold: int, epoch: int, epochs: int, row: dict, metric: str, epoch_start: float, started: float
) -> None:
    """One progress line per epoch (visible in results/logs even when tqdm is off); the ETA assumes all epochs run."""
    now = time.perf_counter()
    eta = (now - started) / (epoch + 1) * (epochs - epoch - 1)
    log.info(
        "%s fold %d epoch %d/%d: train loss %.4f, val loss %.4f, val %s %.4f, %.1f s, ETA %.0f s",
        model_name,
        fold,
        epoch + 1,
        epochs,
        row["train_loss"],
        row["val_loss"],
        metric,
        row[f"val_{metric}"],
        now - epoch_start,
        eta,
    )


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
    first_stage: str | None = None,
    text_encoder: str | None = None,
    hier_prompts: str | None = None,
) -> None:
    """Train ``model_name`` on fold ``fold`` and write model.pt, history.csv, predictions.parquet to ``out_dir``.

    The kept checkpoint is the epoch with the lowest validation loss; training stops after
    ``params.patience`` epochs without improvement. Slides without patches are skipped. A two-stage
    model (registry ``first_stage``) gets the same fold's first-stage model.pt as ``first_stage``;
    it is loaded and handed to ``model.init_from_first_stage`` with the full training bags before
    the first epoch. A vision-language model (registry inputs ``text``, ``text_encoder``: HiVE-MIL,
    ViLa-MIL) also gets the text tower of ``text_encoder`` (what ``load_encoder`` takes for
    ``training.encoder``) and the task's hierarchical prompt file ``hier_prompts``; model.pt records both.
    """
    entry = registry.get(model_name)
    registry.check_task_kind(model_name, task.kind)
    if params.balance not in BALANCE:
        raise ConfigError(f"training.balance is {params.balance!r}; use one of {BALANCE}")
    unsupported = sorted(set(entry.inputs) - set(BAG_INPUTS))
    if unsupported:
        raise TrainingDataError(
            f"model {model_name} needs inputs {unsupported}, which the bag training loop does not load"
        )
    if entry.first_stage and first_stage is None:
        raise TrainingDataError(
            f"model {model_name} starts from a trained {entry.first_stage} of the same fold; pass its model.pt as first_stage"
        )
    seed_everything(params.seed)
    if params.num_threads > 0:
        torch.set_num_threads(params.num_threads)
    device = select_device(params.device)
    input_kind = "hierarchy" if "hierarchy" in entry.inputs else "flat"
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
    weight = _loss_weight(task, params.balance, parts["train"], n_outputs)
    weight = None if weight is None else weight.to(device)
    draw = _draw_weights(task, params.balance, parts["train"])

    first_id = table["slide_id"].iloc[0]
    in_dim = feature_dim(paths[first_id])
    identity = bag_attrs(features.get(first_id, paths[first_id]))  # encoder, magnification of the features
    model_kwargs = {"dropout": params.dropout, **params.model_kwargs}
    text_kwargs, text_record = text_inputs(entry, text_encoder, hier_prompts, classes, task.name)
    model = entry.build(in_dim, n_outputs, **model_kwargs, **text_kwargs).to(device)
    parents = bool(getattr(entry.cls, "reads_parent_features", False))
    store = _BagStore(paths, input_kind, params.cache_mb, coords="coords" in entry.inputs, parents=parents)
    if entry.first_stage:
        record = load_checkpoint(first_stage, {"model": entry.first_stage, "in_dim": in_dim})
        first_model = registry.from_checkpoint(record).to(device)
        train_bags = [store[s].to(device) for s in parts["train"]["slide_id"]]
        model.init_from_first_stage(first_model, train_bags)
        del first_model, train_bags
        log.info("%s initialised from the first-stage %s checkpoint %s", model_name, entry.first_stage, first_stage)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=params.lr, weight_decay=params.weight_decay)
    generator = torch.Generator().manual_seed(params.seed)
    rng = np.random.default_rng(params.seed)
    metrics_fn = task_metrics(task)
    metric_name = PRIMARY_METRIC[task.kind]
    train_ids = parts["train"]["slide_id"].to_numpy()

    history, best_loss, best_state, best_epoch, stale = [], float("inf"), None, -1, 0
    started = time.perf_counter()
    for epoch in tqdm(range(params.epochs), desc=f"{model_name} fold {fold}", disable=None):
        epoch_start = time.perf_counter()
        model.train()
        train_losses = []
        n = len(train_ids)
        order = rng.permutation(n) if draw is None else rng.choice(n, n, p=draw)
        optimizer.zero_grad()
        for step, slide_id in enumerate(train_ids[order], 1):
            bag = model.training_bag(store[slide_id], params.max_instances, generator).to(device)
            loss, _ = _forward_loss(model, task, bag, targets[slide_id].to(device), weight)
            (loss / params.accumulate if params.accumulate > 1 else loss).backward()
            if step % params.accumulate == 0 or step == n:
                optimizer.step()
                optimizer.zero_grad()
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
        _log_epoch(model_name, fold, epoch, params.epochs, history[-1], metric_name, epoch_start, started)
        if parts["val"].empty or (not math.isnan(val_loss) and val_loss < best_loss):
            best_loss, best_state, best_epoch, stale = val_loss, copy.deepcopy(model.state_dict()), epoch, 0
        else:
            stale += 1
            if stale >= params.patience:
                log.info("early stop at epoch %d (best val loss %.4f at epoch %d)", epoch, best_loss, best_epoch)
                break
    if best_state is None:
        # every validation loss was NaN (a diverged model, or no finite loss on val): keep the last epoch, say so
        log.warning("fold %d: validation loss was NaN in every epoch; keeping the last epoch (%d)", fold, epoch)
        best_state, best_epoch = copy.deepcopy(model.state_dict()), epoch
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
        "state_dict": best_state,
        "model": model_name,
        "encoder": identity.get("encoder"),
        "magnification": identity.get("magnification"),
        "in_dim": in_dim,
        "n_outputs": n_outputs,
        "model_kwargs": model_kwargs,
        "task": asdict(task),
        "classes": classes,
        "survival_edges": None if edges is None else edges.tolist(),
        "best_epoch": best_epoch,
        "params": asdict(params),
        **text_record,
    }
    save_checkpoint(out / "model.pt", checkpoint)
    write_csv(out / "history.csv", pd.DataFrame(history))
    write_parquet(out / "predictions.parquet", predictions)
    log.info(
        "fold %d: best epoch %d, val loss %.4f, %d test predictions",
        fold,
        best_epoch,
        best_loss,
        (predictions["split"] == "test").sum(),
    )
