"""DTFD-MIL: double-tier feature distillation over random pseudo-bags.

Zhang et al., "DTFD-MIL: Double-Tier Feature Distillation Multiple Instance Learning for Histopathology
Whole Slide Image Classification", CVPR 2022. Tier 1 splits the bag into M random pseudo-bags, each
classified by ABMIL with the slide label; tier 2 pools their distilled features (the AFS variant:
the attention-weighted pseudo-bag feature) into the slide prediction.
"""

from __future__ import annotations

import torch
from torch import nn

from slidesnake.models.mil.base import GatedAttention, MILModel, MILOutput, attention_pool, embed
from slidesnake.models.registry import register


@register("dtfd")
class DTFD(MILModel):
    """Tier-1 ABMIL per pseudo-bag (auxiliary logits) -> tier-2 ABMIL over distilled features."""

    def __init__(
        self,
        in_dim: int,
        n_outputs: int,
        hidden: int = 256,
        attn_dim: int = 128,
        dropout: float = 0.25,
        n_groups: int = 5,
    ) -> None:
        super().__init__(in_dim, n_outputs)
        self.embed = embed(in_dim, hidden, dropout)
        self.tier1_attention = GatedAttention(hidden, attn_dim, dropout=dropout)
        self.tier1_classifier = nn.Linear(hidden, n_outputs)
        self.tier2_attention = GatedAttention(hidden, attn_dim, dropout=dropout)
        self.tier2_classifier = nn.Linear(hidden, n_outputs)
        self.n_groups = n_groups

    def forward(self, features: torch.Tensor, coords=None, mask=None, label=None) -> MILOutput:
        h = self.embed(features)
        n = h.shape[0]
        order = torch.randperm(n, device=h.device) if self.training else torch.arange(n, device=h.device)
        scores = self.tier1_attention(h)
        attention = torch.empty(n, device=h.device)
        distilled, pseudo_logits = [], []
        for group in torch.tensor_split(order, min(self.n_groups, n)):
            pooled, w = attention_pool(h[group], scores[group])
            attention[group] = w / len(order) * len(group)  # comparable across pseudo-bags
            distilled.append(pooled)
            pseudo_logits.append(self.tier1_classifier(pooled))
        d = torch.stack(distilled)
        slide, _ = attention_pool(d, self.tier2_attention(d))
        return MILOutput(
            logits=self.tier2_classifier(slide), attention=attention, extra_logits=torch.stack(pseudo_logits)
        )
