"""Task losses: weighted cross-entropy, BCE for mutations, discrete-time survival NLL.

Class weights counter the imbalance of small cohorts (a model that predicts the majority class
otherwise wins on loss) and multiply each bag's loss. Survival uses the per-bag discrete-time NLL
because MIL trains one bag per step and a Cox partial likelihood needs many.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def class_weights(targets: np.ndarray, n_classes: int) -> torch.Tensor:
    """Inverse-frequency weights n / (C * n_c), 1 for classes absent from ``targets``."""
    counts = np.bincount(np.asarray(targets, dtype=int), minlength=n_classes).astype(float)
    weights = np.where(counts > 0, len(targets) / (n_classes * np.maximum(counts, 1)), 1.0)
    return torch.tensor(weights, dtype=torch.float32)


def positive_weights(targets: np.ndarray) -> torch.Tensor:
    """Per-label BCE pos_weight = negatives / positives (1 where a label has no positive or negative)."""
    targets = np.asarray(targets, dtype=float)
    pos = targets.sum(axis=0)
    neg = len(targets) - pos
    return torch.tensor(np.where((pos > 0) & (neg > 0), neg / np.maximum(pos, 1), 1.0), dtype=torch.float32)


def survival_bins(times: np.ndarray, events: np.ndarray, n_bins: int = 4) -> np.ndarray:
    """Inner bin edges: quantiles of uncensored times (as in Patch-GCN/MCAT); all times if none died."""
    times = np.asarray(times, dtype=float)
    events = np.asarray(events, dtype=int)
    source = times[events == 1] if events.sum() >= n_bins else times
    return np.unique(np.quantile(source, np.linspace(0, 1, n_bins + 1)[1:-1]))


def time_to_bin(times: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Interval index of each time given inner ``edges`` (0 .. len(edges))."""
    return np.searchsorted(edges, np.asarray(times, dtype=float), side="right")


def discrete_survival_nll(logits: torch.Tensor, bin_index: torch.Tensor, event: torch.Tensor) -> torch.Tensor:
    """Discrete-time survival NLL (Zadeh & Schmid 2020) for hazard logits (B, T).

    An event in bin j contributes -log S(j-1) - log h(j); a censored time in bin j contributes -log S(j).
    """
    hazards = torch.sigmoid(logits).clamp(1e-7, 1 - 1e-7)
    surv = torch.cumprod(1 - hazards, dim=1)
    surv_pad = torch.cat([torch.ones_like(surv[:, :1]), surv], dim=1)
    j = bin_index.long().view(-1, 1)
    e = event.float().view(-1, 1)
    uncensored = -e * (torch.log(surv_pad.gather(1, j)) + torch.log(hazards.gather(1, j)))
    censored = -(1 - e) * torch.log(surv_pad.gather(1, j + 1))
    return (uncensored + censored).mean()


def survival_risk(logits: torch.Tensor) -> torch.Tensor:
    """Risk score = minus the sum of the survival curve (higher means shorter expected survival)."""
    return -torch.cumprod(1 - torch.sigmoid(logits), dim=-1).sum(dim=-1)


def weighted_cross_entropy(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    """Mean over rows of weight[y] * CE(logits, y), not renormalised by the summed weight.

    ``F.cross_entropy(weight=...)`` divides by the batch's summed weight, so with one bag per step
    (MIL) the weight cancels exactly and class weighting does nothing; here it scales each bag's loss.
    """
    loss = F.cross_entropy(logits, target, reduction="none")
    return (loss if weight is None else loss * weight[target]).mean()


def task_loss(
    kind: str, logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Loss of slide logits (B, C) against targets: class index, binary vector, or (bin, event)."""
    if kind == "classification":
        return weighted_cross_entropy(logits, target.long().view(-1).expand(logits.shape[0]), weight)
    if kind == "multilabel":
        return F.binary_cross_entropy_with_logits(logits, target.float().expand_as(logits), pos_weight=weight)
    target = target.view(-1, 2).expand(logits.shape[0], 2)
    return discrete_survival_nll(logits, target[:, 0], target[:, 1])
