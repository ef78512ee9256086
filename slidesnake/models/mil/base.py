"""The interface every MIL model shares: a bag of instance features in, slide logits out.

One contract lets the training loop, evaluation and heatmaps treat ABMIL, TransMIL, CLAM, ... alike.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from slidesnake.errors import InputError


class MissingCoordsError(InputError):
    """A model that builds a spatial structure (graph, grid) was given no coordinates."""


@dataclass
class MILOutput:
    """What a forward pass returns.

    logits: (C,) slide-level outputs. attention: (N,) one score per instance (or per parent region
    for hierarchical models), None if the model has none. extra_logits: (M, C) auxiliary slide-level
    predictions that the loop scores with the task loss against the bag target (DSMIL max-instance
    branch, DTFD pseudo-bags). aux_loss: a label-aware or self-supervised loss the model computes
    itself (CLAM instance clustering, MHIM consistency), already weighted.
    """

    logits: torch.Tensor
    attention: torch.Tensor | None = None
    extra_logits: torch.Tensor | None = None
    aux_loss: torch.Tensor | None = None


class MILModel(nn.Module):
    """Base class: subclasses implement ``forward(features, coords=None, mask=None, label=None)``.

    ``input_kind`` says which feature file the loop must load: "flat" (features h5, (N, D)) or
    "hierarchy" (hierarchy h5, (N5, 16, D) plus a mask). ``label`` is the integer class of the bag
    and is given only for single-label classification during training (CLAM needs it).
    """

    input_kind: str = "flat"

    def __init__(self, in_dim: int, n_outputs: int) -> None:
        super().__init__()
        self.in_dim = in_dim
        self.n_outputs = n_outputs

    def training_bag(self, bag, max_instances: int, generator: torch.Generator):
        """The view of ``bag`` one training step sees: a random ``max_instances`` subset (memory bound).

        Models whose structure depends on the whole bag (graphs, grids) override this.
        """
        from slidesnake.train.data import subsample  # placeholder until Bag/subsample move into this module

        return subsample(bag, max_instances, generator)

    def init_from_first_stage(self, first_stage: MILModel, train_bags: list) -> None:
        """Initialise from the same fold's trained first-stage model (two-stage models override this)."""
        raise NotImplementedError(
            f"{type(self).__name__} declares no first stage; register it with first_stage=... and override "
            "init_from_first_stage to use the first-stage model"
        )


def embed(in_dim: int, hidden: int, dropout: float) -> nn.Sequential:
    """The instance embedding used by most MIL papers: Linear -> ReLU -> Dropout."""
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Dropout(dropout))


class GatedAttention(nn.Module):
    """Gated attention scorer of Ilse et al. (2018): a_i = w^T (tanh(V h_i) * sigmoid(U h_i)).

    Returns raw scores (N, n_heads); callers softmax them over instances.
    """

    def __init__(self, dim: int, attn_dim: int = 128, n_heads: int = 1, dropout: float = 0.0) -> None:
        super().__init__()
        self.v = nn.Sequential(nn.Linear(dim, attn_dim), nn.Tanh(), nn.Dropout(dropout))
        self.u = nn.Sequential(nn.Linear(dim, attn_dim), nn.Sigmoid(), nn.Dropout(dropout))
        self.w = nn.Linear(attn_dim, n_heads)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.w(self.v(h) * self.u(h))


def attention_pool(h: torch.Tensor, scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax ``scores`` (N, 1) over instances and return (pooled (dim,), weights (N,))."""
    weights = torch.softmax(scores[:, 0], dim=0)
    return weights @ h, weights
