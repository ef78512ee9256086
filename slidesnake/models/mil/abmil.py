"""ABMIL: gated-attention multiple-instance learning.

Ilse, Tomczak & Welling, "Attention-based Deep Multiple Instance Learning", ICML 2018.
The slide embedding is the attention-weighted mean of instance embeddings; the gated scorer
(tanh * sigmoid) is the paper's defining mechanism.
"""

from __future__ import annotations

import torch
from torch import nn

from slidesnake.models.mil.base import GatedAttention, MILModel, MILOutput, attention_pool, embed
from slidesnake.models.registry import register


@register("abmil")
class ABMIL(MILModel):
    """Gated-attention MIL: embed instances, score them, softmax-pool, classify."""

    def __init__(
        self, in_dim: int, n_outputs: int, hidden: int = 256, attn_dim: int = 128, dropout: float = 0.25
    ) -> None:
        super().__init__(in_dim, n_outputs)
        self.embed = embed(in_dim, hidden, dropout)
        self.attention = GatedAttention(hidden, attn_dim, dropout=dropout)
        self.classifier = nn.Linear(hidden, n_outputs)

    def forward(
        self,
        features: torch.Tensor,
        coords: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        label: torch.Tensor | None = None,
    ) -> MILOutput:
        pooled, weights = self.bag_embedding(features)
        return MILOutput(logits=self.classifier(pooled), attention=weights)

    def bag_embedding(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(slide embedding (hidden,), attention weights (N,)): what MHIM's teacher and IBMIL's k-means use."""
        h = self.embed(features)
        return attention_pool(h, self.attention(h))
