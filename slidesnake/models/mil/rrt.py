"""RRT-MIL: re-embedding the instances with a regional transformer before ABMIL pooling.

Tang et al., "Feature Re-Embedding: Towards Foundation Model-Level Performance in Computational
Pathology", CVPR 2024. Instances are laid on a square grid and split into regions; R-MSA is
self-attention inside each region, CR-MSA attends across one representative per region, and the
re-embedded instances feed a standard attention-MIL head. A training bag larger than
``max_instances`` is cropped to a region-aligned square window of the full bag's grid, so each kept
instance shares its region with the same neighbours as at evaluation (a random subset would not).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from slidesnake.models.mil.base import Bag, GatedAttention, MILModel, MILOutput, attention_pool, embed, grid_window
from slidesnake.models.registry import register


@register("rrt")
class RRTMIL(MILModel):
    """Regional MSA + cross-region MSA re-embedding, then gated-attention pooling."""

    def __init__(
        self,
        in_dim: int,
        n_outputs: int,
        hidden: int = 256,
        attn_dim: int = 128,
        dropout: float = 0.25,
        heads: int = 4,
        region_side: int = 8,
    ) -> None:
        super().__init__(in_dim, n_outputs)
        self.embed = embed(in_dim, hidden, dropout)
        self.region_norm, self.cross_norm = nn.LayerNorm(hidden), nn.LayerNorm(hidden)
        self.region_attn = nn.MultiheadAttention(hidden, heads, batch_first=True)
        self.cross_score = nn.Linear(hidden, 1)
        self.cross_attn = nn.MultiheadAttention(hidden, heads, batch_first=True)
        self.attention = GatedAttention(hidden, attn_dim, dropout=dropout)
        self.classifier = nn.Linear(hidden, n_outputs)
        self.region_side = region_side

    def grid_side(self, n: int) -> int:
        """Side of the square instance grid of an ``n``-instance bag: a multiple of the region side."""
        return math.ceil(math.sqrt(n) / self.region_side) * self.region_side

    def training_bag(self, bag: Bag, max_instances: int, generator: torch.Generator) -> Bag:
        """A region-aligned square window of the full bag's grid, at most ``max_instances`` instances."""
        if max_instances <= 0 or len(bag) <= max_instances:
            return bag
        r = self.region_side
        window = max(r, math.isqrt(max_instances) // r * r)
        return bag.rows(grid_window(len(bag), self.grid_side(len(bag)), window, generator, align=r))

    def forward(self, features: torch.Tensor, coords=None, mask=None, label=None) -> MILOutput:
        h = self.embed(features)
        h = h + self._re_embed(h)
        pooled, weights = attention_pool(h, self.attention(h))
        return MILOutput(logits=self.classifier(pooled), attention=weights)

    def _re_embed(self, h: torch.Tensor) -> torch.Tensor:
        n, dim = h.shape
        r = self.region_side
        side = self.grid_side(n)
        grid = F.pad(h, (0, 0, 0, side * side - n)).view(side // r, r, side // r, r, dim)
        regions = grid.permute(0, 2, 1, 3, 4).reshape(-1, r * r, dim)  # (R, r*r, dim)
        valid = F.pad(torch.ones(n, dtype=torch.bool, device=h.device), (0, side * side - n))
        valid = valid.view(side // r, r, side // r, r).permute(0, 2, 1, 3).reshape(-1, r * r)
        keep = valid.any(dim=1)
        regions, valid = regions[keep], valid[keep]
        x = self.region_norm(regions)
        local, _ = self.region_attn(x, x, x, key_padding_mask=~valid, need_weights=False)  # R-MSA
        local = local.masked_fill(~valid.unsqueeze(-1), 0)
        # CR-MSA: one attention-pooled representative per region attends to all others, then is broadcast back
        score = self.cross_score(local).squeeze(-1).masked_fill(~valid, float("-inf"))
        reps = (torch.softmax(score, dim=1).unsqueeze(-1) * local).sum(dim=1, keepdim=True).transpose(0, 1)
        reps_n = self.cross_norm(reps)
        cross, _ = self.cross_attn(reps_n, reps_n, reps_n, need_weights=False)
        out = local + cross.transpose(0, 1)
        flat = torch.zeros(keep.numel(), r * r, dim, device=h.device, dtype=h.dtype)
        flat[keep] = out
        flat = flat.view(side // r, side // r, r, r, dim).permute(0, 2, 1, 3, 4).reshape(side * side, dim)
        return flat[:n]
