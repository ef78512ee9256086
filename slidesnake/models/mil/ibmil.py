"""IBMIL: interventional bag MIL with a backdoor adjustment over a confounder dictionary.

Lin et al., "Interventional Bag Multi-Instance Learning On Whole-Slide Pathological Images", CVPR 2023.
The bag embedding z is re-expressed as z + sum_c P(c) softmax(q(z)·k(c)) c over confounder prototypes
c, approximating P(Y | do(X)). The paper fits the prototypes by k-means on bag embeddings of a
first-stage model; here they are an online k-means (EMA) over training bag embeddings, so one
training run suffices.
"""

from __future__ import annotations

import torch
from torch import nn

from slidesnake.models.mil.base import GatedAttention, MILModel, MILOutput, attention_pool, embed
from slidesnake.models.registry import register


@register("ibmil", first_stage="abmil")
class IBMIL(MILModel):
    """ABMIL aggregator + backdoor-adjusted bag embedding over ``n_confounders`` prototypes."""

    def __init__(
        self,
        in_dim: int,
        n_outputs: int,
        hidden: int = 256,
        attn_dim: int = 128,
        dropout: float = 0.25,
        n_confounders: int = 8,
        confounder_momentum: float = 0.9,
    ) -> None:
        super().__init__(in_dim, n_outputs)
        self.embed = embed(in_dim, hidden, dropout)
        self.attention = GatedAttention(hidden, attn_dim, dropout=dropout)
        self.query = nn.Linear(hidden, attn_dim)
        self.key = nn.Linear(hidden, attn_dim)
        self.classifier = nn.Linear(2 * hidden, n_outputs)
        self.register_buffer("confounders", torch.zeros(n_confounders, hidden))
        self.register_buffer("prior", torch.full((n_confounders,), 1.0 / n_confounders))
        self.register_buffer("n_seen", torch.zeros((), dtype=torch.long))
        self.momentum = confounder_momentum

    def forward(self, features: torch.Tensor, coords=None, mask=None, label=None) -> MILOutput:
        h = self.embed(features)
        z, weights = attention_pool(h, self.attention(h))
        if self.training:
            self._update_confounders(z.detach())
        att = torch.softmax(self.key(self.confounders) @ self.query(z) / self.query.out_features**0.5, dim=0)
        adjusted = (att * self.prior) @ self.confounders / (att * self.prior).sum().clamp_min(1e-8)
        return MILOutput(logits=self.classifier(torch.cat([z, adjusted])), attention=weights)

    @torch.no_grad()
    def _update_confounders(self, z: torch.Tensor) -> None:
        """Online k-means: seed prototypes with the first bags, then move the nearest one toward z."""
        k = self.confounders.shape[0]
        seen = int(self.n_seen)
        if seen < k:
            self.confounders[seen] = z
        else:
            nearest = torch.cdist(z[None], self.confounders)[0].argmin()
            self.confounders[nearest].mul_(self.momentum).add_(z, alpha=1 - self.momentum)
            counts = self.prior * seen
            counts[nearest] += 1
            self.prior.copy_(counts / counts.sum())
        self.n_seen += 1
