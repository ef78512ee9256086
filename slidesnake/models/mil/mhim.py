"""MHIM-MIL: masked hard instance mining with a momentum teacher.

Tang et al., "Multiple Instance Learning Framework with Masked Hard Instance Mining for Whole Slide
Image Classification", ICCV 2023. An EMA teacher scores the instances; the student (ABMIL) trains on
the bag with the most-attended (easy) instances masked, so it must learn the hard ones, plus a
consistency loss pulling the student's bag embedding toward the teacher's.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from slidesnake.models.mil.base import GatedAttention, MILModel, MILOutput, attention_pool, embed
from slidesnake.models.registry import register


class _Student(nn.Module):
    def __init__(self, in_dim: int, hidden: int, attn_dim: int, dropout: float) -> None:
        super().__init__()
        self.embed = embed(in_dim, hidden, dropout)
        self.attention = GatedAttention(hidden, attn_dim, dropout=dropout)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.embed(x)
        return attention_pool(h, self.attention(h))


@register("mhim", first_stage="abmil")
class MHIMMIL(MILModel):
    """ABMIL student + EMA teacher; high-attention masking during training only."""

    def __init__(
        self,
        in_dim: int,
        n_outputs: int,
        hidden: int = 256,
        attn_dim: int = 128,
        dropout: float = 0.25,
        mask_ratio: float = 0.5,
        top_fraction: float = 0.1,
        momentum: float = 0.9999,
        consistency_weight: float = 0.1,
    ) -> None:
        super().__init__(in_dim, n_outputs)
        self.student = _Student(in_dim, hidden, attn_dim, dropout)
        self.teacher = copy.deepcopy(self.student).requires_grad_(False)
        self.classifier = nn.Linear(hidden, n_outputs)
        self.mask_ratio, self.top_fraction = mask_ratio, top_fraction
        self.momentum, self.consistency_weight = momentum, consistency_weight

    def forward(self, features: torch.Tensor, coords=None, mask=None, label=None) -> MILOutput:
        if not self.training:
            pooled, weights = self.student(features)
            return MILOutput(logits=self.classifier(pooled), attention=weights)
        self._update_teacher()
        with torch.no_grad():
            self.teacher.eval()
            teacher_bag, teacher_weights = self.teacher(features)
        keep = self._hard_instances(teacher_weights)
        pooled, weights = self.student(features[keep])
        full = torch.zeros(features.shape[0], device=features.device)
        full[keep] = weights
        consistency = 1 - F.cosine_similarity(pooled, teacher_bag, dim=0)
        return MILOutput(logits=self.classifier(pooled), attention=full, aux_loss=self.consistency_weight * consistency)

    def _hard_instances(self, weights: torch.Tensor) -> torch.Tensor:
        """Indices kept after randomly masking ``mask_ratio`` of the top ``top_fraction`` attended instances."""
        n = weights.shape[0]
        n_top = int(n * self.top_fraction)
        n_mask = int(n_top * self.mask_ratio)
        if n_mask == 0:
            return torch.arange(n, device=weights.device)
        top = torch.topk(weights, n_top).indices
        masked = top[torch.randperm(n_top, device=weights.device)[:n_mask]]
        keep = torch.ones(n, dtype=torch.bool, device=weights.device)
        keep[masked] = False
        return keep.nonzero().view(-1)

    @torch.no_grad()
    def _update_teacher(self) -> None:
        """EMA of the student weights; runs at each training forward, i.e. after the previous step."""
        for t, s in zip(self.teacher.parameters(), self.student.parameters()):
            t.mul_(self.momentum).add_(s.detach(), alpha=1 - self.momentum)
