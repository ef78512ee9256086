"""Two-stage hierarchical MIL in the spirit of HIPT: pool each 5x region's 20x children, then the slide.

Chen et al., "Scaling Vision Transformers to Gigapixel Images via Hierarchical Self-Supervised
Learning", CVPR 2022. HIPT aggregates patch tokens within a region by a transformer and region tokens
into the slide by another. Here stage 1 is a transformer layer over the 16 child slots of each 5x
parent (slot = dy*4+dx, with a learned slot embedding; masked children ignored) with attention
pooling, and stage 2 a transformer layer over the parents with gated-attention pooling.
"""

from __future__ import annotations

import torch
from torch import nn

from slidesnake.models.mil.base import GatedAttention, MILModel, MILOutput, attention_pool, embed
from slidesnake.models.registry import register


@register("hipt", inputs=("hierarchy",))
class HierarchicalMIL(MILModel):
    """Input: (N5, 16, D) children + (N5, 16) mask. Attention is per 5x parent region."""

    input_kind = "hierarchy"
    map_shows = "stage-2 attention weight of each 5x region"

    def __init__(
        self,
        in_dim: int,
        n_outputs: int,
        hidden: int = 256,
        attn_dim: int = 128,
        dropout: float = 0.25,
        heads: int = 4,
    ) -> None:
        super().__init__(in_dim, n_outputs)
        self.embed = embed(in_dim, hidden, dropout)
        self.slot = nn.Parameter(torch.zeros(16, hidden))
        self.local = nn.TransformerEncoderLayer(hidden, heads, 2 * hidden, dropout, batch_first=True, norm_first=True)
        self.local_score = nn.Linear(hidden, 1)
        self.regional = nn.TransformerEncoderLayer(
            hidden, heads, 2 * hidden, dropout, batch_first=True, norm_first=True
        )
        self.attention = GatedAttention(hidden, attn_dim, dropout=dropout)
        self.classifier = nn.Linear(hidden, n_outputs)

    def forward(self, features: torch.Tensor, coords=None, mask=None, label=None) -> MILOutput:
        if mask is None:
            mask = features.abs().sum(dim=-1) > 0
        h = self.embed(features) + self.slot  # (N5, 16, hidden)
        # stage 1: children of a parent attend to each other (in chunks: memory stays bounded for 50k patches)
        regions = torch.cat(
            [self._pool_children(h[i : i + 1024], mask[i : i + 1024]) for i in range(0, h.shape[0], 1024)]
        )
        # stage 2: parents attend to each other, then gated attention gives the slide
        r = self.regional(regions.unsqueeze(0)).squeeze(0)
        pooled, weights = attention_pool(r, self.attention(r))
        return MILOutput(logits=self.classifier(pooled), attention=weights)

    def _pool_children(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.local(h, src_key_padding_mask=~mask)
        score = self.local_score(x).squeeze(-1).masked_fill(~mask, float("-inf"))
        return (torch.softmax(score, dim=1).unsqueeze(-1) * x).sum(dim=1)
