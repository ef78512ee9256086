"""CLAM-SB and CLAM-MB: attention MIL with instance-level clustering (pseudo-label) supervision.

Lu et al., "Data-efficient and weakly supervised computational pathology on whole-slide images",
Nature Biomedical Engineering 2021. The defining mechanism: the k most- and least-attended instances
get pseudo-labels (in-class / out-of-class) and train per-class instance classifiers. Total loss
0.7 * bag loss + 0.3 * instance loss, as the reference (``bag_weight``). The instance loss needs the
bag's single class label, so multilabel and survival tasks train the bag branch only (logged once).
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from slidesnake.models.mil.base import GatedAttention, MILModel, MILOutput, embed
from slidesnake.models.registry import register

log = logging.getLogger(__name__)


class _CLAM(MILModel):
    multi_branch = False
    bag_weight = 0.7
    map_shows = "attention weight of each instance (the map that picks the instance-loss top-k)"

    def __init__(
        self,
        in_dim: int,
        n_outputs: int,
        hidden: int = 256,
        attn_dim: int = 128,
        dropout: float = 0.25,
        k_sample: int = 8,
        instance_weight: float = 0.3,
    ) -> None:
        super().__init__(in_dim, n_outputs)
        self.embed = embed(in_dim, hidden, dropout)
        heads = n_outputs if self.multi_branch else 1
        self.attention = GatedAttention(hidden, attn_dim, n_heads=heads, dropout=dropout)
        if self.multi_branch:  # one bag classifier per class on its own attention branch
            self.classifiers = nn.ModuleList(nn.Linear(hidden, 1) for _ in range(n_outputs))
        else:
            self.classifier = nn.Linear(hidden, n_outputs)
        self.instance_classifiers = nn.ModuleList(nn.Linear(hidden, 2) for _ in range(n_outputs))
        self.k_sample, self.instance_weight = k_sample, instance_weight
        self._told_no_instance_loss = False

    def forward(self, features: torch.Tensor, coords=None, mask=None, label=None) -> MILOutput:
        h = self.embed(features)
        weights = torch.softmax(self.attention(h), dim=0)  # (N, heads)
        pooled = weights.T @ h  # (heads, hidden)
        if self.multi_branch:
            logits = torch.cat([clf(pooled[c]) for c, clf in enumerate(self.classifiers)])
        else:
            logits = self.classifier(pooled[0])
        branch = int(logits.argmax()) if self.multi_branch else 0
        aux = None
        if label is not None and self.training:
            aux = self.instance_weight * self.instance_loss(h, weights, int(label.view(-1)[0]))
        elif self.training and not self._told_no_instance_loss:
            log.warning(
                "%s: no instance-clustering loss for this task (it needs one class label per bag: single-label"
                " classification); training the bag branch only",
                type(self).__name__,
            )
            self._told_no_instance_loss = True
        return MILOutput(logits=logits, attention=weights[:, branch], aux_loss=aux)

    def instance_loss(self, h: torch.Tensor, weights: torch.Tensor, label: int) -> torch.Tensor:
        """In-class branch: top-k attended are positive, bottom-k negative; other classes: top-k negative."""
        shared = None if self.multi_branch else self.top_k(weights[:, 0])  # CLAM-SB: one map for every class
        picks = [shared or self.top_k(weights[:, c]) for c in range(len(self.instance_classifiers))]
        # one gather of every picked row (its backward is one scatter into h's gradient, not one per class)
        rows = h[torch.cat([torch.cat(pair) for pair in picks])]
        losses, start = [], 0
        for c, (clf, (top_idx, _)) in enumerate(zip(self.instance_classifiers, picks)):
            k = len(top_idx)
            top, bottom = rows[start : start + k], rows[start + k : start + 2 * k]
            start += 2 * k
            if c == label:
                x = torch.cat([top, bottom])
                y = torch.cat([torch.ones(k), torch.zeros(k)]).long().to(h.device)
            else:
                x, y = top, torch.zeros(k, dtype=torch.long, device=h.device)
            losses.append(F.cross_entropy(clf(x), y))
        return torch.stack(losses).mean()

    def top_k(self, attention: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Indices of the k most and k least attended instances (k = k_sample, at most half the bag)."""
        k = min(self.k_sample, attention.shape[0] // 2) or 1
        return torch.topk(attention, k).indices, torch.topk(-attention, k).indices


@register("clam_sb")
class CLAMSB(_CLAM):
    """CLAM single-branch: one attention map shared by all classes."""


@register("clam_mb")
class CLAMMB(_CLAM):
    """CLAM multi-branch: one attention map and bag classifier per class."""

    multi_branch = True
    map_shows = "attention weight of each instance in the predicted class's branch"
