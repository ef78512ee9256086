"""DTFD-MIL: double-tier feature distillation over random pseudo-bags.

Zhang et al., "DTFD-MIL: Double-Tier Feature Distillation Multiple Instance Learning for Histopathology
Whole Slide Image Classification", CVPR 2022. Tier 1 splits the bag into M random pseudo-bags, each
classified by ABMIL with the slide label; tier 2 pools their distilled features (the AFS variant:
the attention-weighted pseudo-bag feature) into the slide prediction. Evaluation splits the bag the
same way (random pseudo-bags, not contiguous strips), from a fixed seed so a slide always gets the
same score, and averages the slide logits over ``eval_draws`` draws.
"""

from __future__ import annotations

import torch
from torch import nn

from slidesnake.models.mil.base import GatedAttention, MILModel, MILOutput, attention_pool, embed
from slidesnake.models.registry import register


@register("dtfd")
class DTFD(MILModel):
    """Tier-1 ABMIL per pseudo-bag (auxiliary logits) -> tier-2 ABMIL over distilled features."""

    map_shows = "tier-1 attention within its pseudo-bag x pseudo-bag share, mean over evaluation draws"

    def __init__(
        self,
        in_dim: int,
        n_outputs: int,
        hidden: int = 256,
        attn_dim: int = 128,
        dropout: float = 0.25,
        n_groups: int = 5,
        eval_draws: int = 4,
        eval_seed: int = 0,
    ) -> None:
        super().__init__(in_dim, n_outputs)
        self.embed = embed(in_dim, hidden, dropout)
        self.tier1_attention = GatedAttention(hidden, attn_dim, dropout=dropout)
        self.tier1_classifier = nn.Linear(hidden, n_outputs)
        self.tier2_attention = GatedAttention(hidden, attn_dim, dropout=dropout)
        self.tier2_classifier = nn.Linear(hidden, n_outputs)
        self.n_groups, self.eval_draws, self.eval_seed = n_groups, eval_draws, eval_seed

    def forward(self, features: torch.Tensor, coords=None, mask=None, label=None) -> MILOutput:
        h = self.embed(features)
        n = h.shape[0]
        scores = self.tier1_attention(h)
        if self.training:
            return self._split_forward(h, scores, torch.randperm(n, device=h.device))
        generator = torch.Generator().manual_seed(self.eval_seed)
        draws = [self._split_forward(h, scores, torch.randperm(n, generator=generator).to(h.device))
                 for _ in range(max(1, self.eval_draws))]  # fmt: skip
        return MILOutput(
            logits=torch.stack([d.logits for d in draws]).mean(dim=0),
            attention=torch.stack([d.attention for d in draws]).mean(dim=0),
            extra_logits=torch.cat([d.extra_logits for d in draws]),
        )

    def pseudo_bags(self, order: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The ``n_groups`` pseudo-bags (index tensors) of a permutation ``order`` of the instances."""
        return torch.tensor_split(order, min(self.n_groups, order.numel()))

    def _split_forward(self, h: torch.Tensor, scores: torch.Tensor, order: torch.Tensor) -> MILOutput:
        groups = self.pseudo_bags(order)
        n, rows = h.shape[0], torch.arange(h.shape[0], device=h.device)
        group_of = torch.empty(n, dtype=torch.long, device=h.device)
        for g, group in enumerate(groups):
            group_of[group] = g
        # every pseudo-bag's softmax as one (groups, N) matrix (-inf outside the group): the tier-1 pooling is
        # then one matrix product with h, instead of a gather of h per pseudo-bag (and its scatter backward)
        masked = scores.new_full((len(groups), n), float("-inf"))
        masked[group_of, rows] = scores[:, 0]
        weights = torch.softmax(masked, dim=1)
        distilled = weights @ h
        sizes = torch.tensor([len(g) for g in groups], device=h.device, dtype=h.dtype)
        attention = weights[group_of, rows] * (sizes[group_of] / n)  # comparable across pseudo-bags
        slide, _ = attention_pool(distilled, self.tier2_attention(distilled))
        return MILOutput(
            logits=self.tier2_classifier(slide), attention=attention, extra_logits=self.tier1_classifier(distilled)
        )
