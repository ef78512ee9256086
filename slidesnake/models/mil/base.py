"""The interface every MIL model shares: a bag of instance features in, slide logits out.

One contract lets the training loop, evaluation and heatmaps treat ABMIL, TransMIL, CLAM, ... alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from slidesnake.errors import InputError

if TYPE_CHECKING:
    from slidesnake.models.mil.abmil import ABMIL


class MissingCoordsError(InputError):
    """A model that builds a spatial structure (graph, grid) was given no coordinates."""


class FirstStageError(InputError):
    """A two-stage model was trained without (or with an unsuitable) first-stage model."""


@dataclass
class Bag:
    """One slide: features (N, D) or (N5, 16, D); coords (N, 2) or parent coords (N5, 2); mask (N5, 16);
    parent_features (N5, D): the 5x parents' own features (hierarchy bags of models that read them)."""

    features: torch.Tensor
    coords: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    parent_features: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.features.shape[0])

    def to(self, device: torch.device) -> Bag:
        """Move every tensor to ``device``."""
        return Bag(*(None if t is None else t.to(device) for t in self._tensors()))

    def rows(self, index: torch.Tensor) -> Bag:
        """The bag restricted to rows ``index`` (features, coords, mask and parent features together)."""
        return Bag(*(None if t is None else t[index] for t in self._tensors()))

    def _tensors(self) -> tuple[torch.Tensor | None, ...]:
        return self.features, self.coords, self.mask, self.parent_features

    def model_inputs(self) -> dict[str, torch.Tensor]:
        """Keyword inputs of ``MILModel.forward`` beyond features/coords/mask that this bag carries."""
        return {} if self.parent_features is None else {"parent_features": self.parent_features}


def subsample(bag: Bag, max_instances: int, generator: torch.Generator) -> Bag:
    """Keep a random ``max_instances`` rows of a larger bag (training only) so memory stays bounded."""
    if max_instances <= 0 or len(bag) <= max_instances:
        return bag
    keep = torch.randperm(len(bag), generator=generator)[:max_instances].sort().values
    return bag.rows(keep)


def grid_window(n: int, side: int, window: int, generator: torch.Generator, align: int = 1) -> torch.Tensor:
    """Row indices of a random ``window`` x ``window`` square of the row-major ``side``-wide grid of ``n`` rows.

    Sequence-grid models (TransMIL, RRT) lay instance i at (i // side, i % side); a crop keeps whole
    grid rows and columns, so each kept instance has the same grid neighbours as in the full bag.
    The square lies in fully filled rows; its corner is a multiple of ``align`` (RRT's regions).
    """
    full_rows = n // side
    window = max(align, min(window, full_rows, side) // align * align)
    r0 = torch.randint(0, max(1, (full_rows - window) // align + 1), (1,), generator=generator).item() * align
    c0 = torch.randint(0, max(1, (side - window) // align + 1), (1,), generator=generator).item() * align
    rows = torch.arange(r0, r0 + window).view(-1, 1) * side
    index = (rows + torch.arange(c0, c0 + window).view(1, -1)).reshape(-1)
    return index[index < n]


@dataclass
class MILOutput:
    """What a forward pass returns.

    logits: (C,) slide-level outputs. attention: (N,) one score per instance (or per parent region
    for hierarchical models), None if the model has none. extra_logits: (M, C) auxiliary slide-level
    predictions that the loop scores with the task loss against the bag target (DSMIL max-instance
    branch, DTFD pseudo-bags). aux_loss: a label-aware or self-supervised loss the model computes
    itself (CLAM instance clustering, MHIM consistency), already weighted. instance_logits: (N, C)
    per-instance outputs on the slide's scale, for models whose slide logit is their mean (mean
    pooling); heatmaps turn them into the task's score (e.g. a survival risk).
    """

    logits: torch.Tensor
    attention: torch.Tensor | None = None
    extra_logits: torch.Tensor | None = None
    aux_loss: torch.Tensor | None = None
    instance_logits: torch.Tensor | None = None


class MILModel(nn.Module):
    """Base class: subclasses implement ``forward(features, coords=None, mask=None, label=None)``.

    ``input_kind`` says which feature file the loop must load: "flat" (features h5, (N, D)) or
    "hierarchy" (hierarchy h5, (N5, 16, D) plus a mask). ``label`` is the integer class of the bag
    and is given only for single-label classification during training (CLAM needs it).
    """

    input_kind: str = "flat"
    #: hierarchy models that read the 5x parents' own features (``forward(..., parent_features=)``)
    reads_parent_features: bool = False
    #: what ``MILOutput.attention`` holds, printed on heatmaps (each model states its own)
    map_shows: str = "attention weight of each instance in the slide embedding"
    #: weight of the slide-level task loss; auxiliary losses come weighted in ``MILOutput.aux_loss``
    bag_weight: float = 1.0

    def __init__(self, in_dim: int, n_outputs: int) -> None:
        super().__init__()
        self.in_dim = in_dim
        self.n_outputs = n_outputs

    def training_bag(self, bag: Bag, max_instances: int, generator: torch.Generator) -> Bag:
        """The bag one training step sees: a random ``max_instances`` subset (spatial models crop instead)."""
        return subsample(bag, max_instances, generator)

    def init_from_first_stage(self, first_stage: ABMIL, train_bags: list[Bag]) -> None:
        """Two-stage models (MHIM, IBMIL) initialise from the same fold's trained ABMIL; others have none."""
        raise FirstStageError(
            f"{type(self).__name__} is a one-stage model: it takes no first-stage model (only mhim and ibmil do)"
        )


def dropout_mask(like: torch.Tensor, p: float) -> torch.Tensor:
    """Inverted-dropout multiplier shaped like ``like``: 1/(1-p) with probability 1-p, else 0 (as ``F.dropout``).

    Drawn as uniform < 1-p rather than with ``bernoulli_``: the same distribution (to float32 resolution) at
    a third of the cost on CPU, where torch's ``bernoulli_`` draws a double per entry serially (unless MKL's
    Intel-only path applies); the masks were 14% of a CLAM training step.
    """
    keep = 1.0 - p
    if keep <= 0:
        return torch.zeros_like(like)
    return torch.rand_like(like).lt_(keep).div_(keep)


class Dropout(nn.Dropout):
    """``nn.Dropout`` (same rate, same scaling, no parameters) with its mask drawn by ``dropout_mask``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        mask = dropout_mask(x, self.p)
        return x.mul_(mask) if self.inplace else x * mask


class Embedding(nn.Sequential):
    """Linear -> ReLU -> Dropout with no intermediate copies (its parameters are ``0.weight``, ``0.bias``).

    The dropout mask m >= 0, so relu(x) * m = relu(x * m): mask then ReLU act in place on the Linear's
    output, which the Linear's backward does not keep. Values and gradients are those of the three
    modules applied in turn; one (N, hidden) tensor is written instead of three.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        linear, _, dropout = self
        h = linear(x)
        if dropout.training and dropout.p > 0:
            h.mul_(dropout_mask(h, dropout.p))
        return h.relu_()


def embed(in_dim: int, hidden: int, dropout: float) -> Embedding:
    """The instance embedding used by most MIL papers: Linear -> ReLU -> Dropout."""
    return Embedding(nn.Linear(in_dim, hidden), nn.ReLU(), Dropout(dropout))


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
        # both branches' Linear layers as one matrix product (same weights and result, one pass over h)
        v, u = self.v[0], self.u[0]
        vu = F.linear(h, torch.cat([v.weight, u.weight]), torch.cat([v.bias, u.bias]))
        gate_v, gate_u = vu.split(v.out_features, dim=-1)
        gate = torch.tanh(gate_v) * torch.sigmoid(gate_u)
        if self.training and (self.v[2].p > 0 or self.u[2].p > 0):
            # dropout on each branch, then their product = one Bernoulli((1-p)^2) mask on the product,
            # scaled by 1/(1-p)^2: the same distribution as two masks, at the cost of one; in place (the
            # product's backward keeps its factors, not the product)
            gate.mul_(dropout_mask(gate, 1 - (1 - self.v[2].p) * (1 - self.u[2].p)))
        return self.w(gate)


def attention_pool(h: torch.Tensor, scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax ``scores`` (N, 1) over instances and return (pooled (dim,), weights (N,))."""
    weights = torch.softmax(scores[:, 0], dim=0)
    return weights @ h, weights
