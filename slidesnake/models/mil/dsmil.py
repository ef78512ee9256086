"""DSMIL: dual-stream MIL with a max-instance stream and a critical-instance attention stream.

Li, Li & Eliceiri, "Dual-stream Multiple Instance Learning Network for Whole Slide Image
Classification with Self-supervised Contrastive Learning", CVPR 2021. Attention of every instance is
the similarity of its query to the query of the highest-scoring (critical) instance, per class.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from slidesnake.models.mil.base import Dropout, MILModel, MILOutput, embed
from slidesnake.models.registry import register


@register("dsmil")
class DSMIL(MILModel):
    """Instance classifier (max stream) + critical-instance attention pooling (bag stream)."""

    map_shows = "similarity to the critical (top-scoring) instance, predicted class"

    def __init__(
        self, in_dim: int, n_outputs: int, hidden: int = 256, attn_dim: int = 128, dropout: float = 0.25
    ) -> None:
        super().__init__(in_dim, n_outputs)
        self.embed = embed(in_dim, hidden, dropout)
        self.instance_classifier = nn.Linear(hidden, n_outputs)
        self.query = nn.Sequential(nn.Linear(hidden, attn_dim), nn.ReLU(), nn.Linear(attn_dim, attn_dim), nn.Tanh())
        self.value = nn.Sequential(Dropout(dropout), nn.Linear(hidden, hidden))
        # the paper's Conv1d over the C class embeddings = one linear map of the flattened (C, hidden) bag
        self.bag_classifier = nn.Conv1d(n_outputs, n_outputs, kernel_size=hidden)

    def forward(self, features: torch.Tensor, coords=None, mask=None, label=None) -> MILOutput:
        h = self.embed(features)
        instance_logits = self.instance_classifier(h)  # (N, C)
        critical = instance_logits.argmax(dim=0)  # (C,)
        q = self.query(h)
        scores = q @ q[critical].T / q.shape[1] ** 0.5  # (N, C)
        weights = torch.softmax(scores, dim=0)
        # weights.T @ value(h) with the value Linear applied after pooling, to C rows instead of N: each
        # column of weights sums to 1, so the bias passes through unchanged (about a quarter of the model's FLOPs)
        dropout, value = self.value
        bag = value(weights.T @ dropout(h))  # (C, hidden)
        conv = self.bag_classifier  # a Conv1d whose kernel spans the whole row is one linear map: computed as one
        logits = F.linear(bag.reshape(-1), conv.weight.reshape(conv.out_channels, -1), conv.bias)
        max_logits = instance_logits.max(dim=0).values
        return MILOutput(logits=logits, attention=weights[:, int(logits.argmax())], extra_logits=max_logits.view(1, -1))
