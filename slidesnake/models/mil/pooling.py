"""Baselines: mean-pooling and max-pooling MIL (embed each instance, pool, classify).

The instance-pooling baselines of Wang et al., "Revisiting multiple instance neural networks",
Pattern Recognition 2018 (mi-Net / MI-Net); every MIL paper in the zoo compares against them.
"""

from __future__ import annotations

import torch
from torch import nn

from slidesnake.models.mil.base import MILModel, MILOutput, embed
from slidesnake.models.registry import register


@register("meanpool")
class MeanPool(MILModel):
    """Mean of instance embeddings; the linear head makes per-instance logits average to the slide logit."""

    map_shows = "instance logit of the predicted class (survival: the instance's own risk)"

    def __init__(self, in_dim: int, n_outputs: int, hidden: int = 256, dropout: float = 0.25) -> None:
        super().__init__(in_dim, n_outputs)
        self.embed = embed(in_dim, hidden, dropout)
        self.classifier = nn.Linear(hidden, n_outputs)

    def forward(self, features: torch.Tensor, coords=None, mask=None, label=None) -> MILOutput:
        h = self.embed(features)
        logits = self.classifier(h.mean(dim=0))
        instance_logits = self.classifier(h)  # their mean is the slide logit: the head is linear
        return MILOutput(
            logits=logits, attention=instance_logits[:, int(logits.argmax())], instance_logits=instance_logits
        )


@register("maxpool")
class MaxPool(MILModel):
    """Element-wise max of instance embeddings; an instance's score is how many dimensions it wins."""

    map_shows = "share of embedding dimensions in which the instance is the bag maximum"

    def __init__(self, in_dim: int, n_outputs: int, hidden: int = 256, dropout: float = 0.25) -> None:
        super().__init__(in_dim, n_outputs)
        self.embed = embed(in_dim, hidden, dropout)
        self.classifier = nn.Linear(hidden, n_outputs)

    def forward(self, features: torch.Tensor, coords=None, mask=None, label=None) -> MILOutput:
        h = self.embed(features)
        pooled, winner = h.max(dim=0)
        share = torch.bincount(winner, minlength=h.shape[0]).float() / h.shape[1]
        return MILOutput(logits=self.classifier(pooled), attention=share)
