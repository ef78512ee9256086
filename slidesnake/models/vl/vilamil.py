"""ViLa-MIL: dual-scale vision-language MIL with learned prototypes and a text decoder (HiVE-MIL's baseline).

Shi et al., "ViLa-MIL: Dual-scale Vision-Language Multiple Instance Learning for Whole Slide Image
Classification", CVPR 2024. At each scale (5x parents, 20x children) 16 learned prototypes attend over the
patches (cross-attention, LayerNorm of the residual), gated attention pools the prototypes into a slide
feature, and a text decoder lets each class's description attend over [prototypes; patches]; logits are
the low-scale plus the high-scale image-text similarities. Class texts come through the frozen text tower
with 16 CoOp context vectors, pooled at the true end-of-text token (the reference pools 16 tokens early).

Choices (documented deviations): the class text of a scale is the normalised mean of the class's coarse
(5x) or fine (20x) descriptions from the hierarchical prompt file, each encoded as its own prompt; the text
tower is frozen (the reference trains CLIP RN50's whole text tower, which few-shot data cannot support);
similarities are cosines × the encoder's exp(logit_scale), the CLIP convention (the reference multiplies
unnormalised vectors, whose scale depends on the encoder).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from slidesnake.models.mil.base import GatedAttention, MILModel, MILOutput
from slidesnake.models.registry import register
from slidesnake.models.vl.hier_prompts import HierPrompts
from slidesnake.models.vl.prompt_learner import N_CTX, FrozenTowerMixin, PromptLearner, TextTower

N_PROTOTYPES = 16


@register("vilamil", inputs=("hierarchy", "text", "text_encoder"), task_kinds=("classification",))
class ViLaMIL(FrozenTowerMixin, MILModel):
    """ViLa-MIL on a hierarchy bag; constructor inputs and forward as :class:`~slidesnake.models.vl.hivemil.HiVEMIL`.

    ``attention`` is the gated-attention-weighted prototype attention over the 5x parents (N5,).
    """

    input_kind = "hierarchy"
    reads_parent_features = True
    map_shows = "prototype cross-attention over the 5x regions, weighted by the gated attention"

    def __init__(
        self,
        in_dim: int,
        n_outputs: int,
        text_tower: TextTower,
        prompts: HierPrompts,
        n_ctx: int = N_CTX,
        n_prototypes: int = N_PROTOTYPES,
        attn_dim: int = 192,
        dropout: float = 0.0,
        logit_scale: float | None = None,
    ) -> None:
        super().__init__(in_dim, n_outputs)
        if prompts.n_classes != n_outputs:
            raise ValueError(f"{prompts.source}: {prompts.n_classes} classes of prompts for a {n_outputs}-class task")
        self._set_tower(text_tower)
        self.prompt_learner = PromptLearner(text_tower, prompts.coarse_texts() + prompts.fine_texts(), n_ctx)
        self.prototypes = nn.Parameter(nn.init.trunc_normal_(torch.empty(n_prototypes, in_dim), std=0.02))
        self.image_attention = nn.MultiheadAttention(in_dim, 1, dropout=dropout, batch_first=True)  # shared by scales
        self.norm = nn.LayerNorm(in_dim)
        self.gate = GatedAttention(in_dim, attn_dim)
        self.text_decoder = nn.MultiheadAttention(in_dim, 1, dropout=dropout, batch_first=True)
        scale = logit_scale if logit_scale is not None else math.exp(text_tower.raw_logit_scale)
        self.logit_scale = float(scale)
        self.n_coarse = len(prompts.coarse_texts())

    def class_texts(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(low (C, D), high (C, D)): per class the normalised mean of its coarse / fine prompt embeddings."""
        t = self.prompt_learner(self.tower)
        c = self.n_outputs
        low = F.normalize(t[: self.n_coarse].view(c, -1, t.shape[1]).mean(1), dim=-1)
        high = F.normalize(t[self.n_coarse :].view(c, -1, t.shape[1]).mean(1), dim=-1)
        return low, high

    def _scale(self, patches: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One scale: prototypes attend over patches, gated pooling, text decoder; returns (logits (C,), weights (N,))."""
        p = self.prototypes.unsqueeze(0)
        x = patches.unsqueeze(0)
        comp, proto_attn = self.image_attention(p, x, x)  # (1, K, D), (1, K, N)
        comp = self.norm(comp + p)[0]
        g = torch.softmax(self.gate(comp)[:, 0], dim=0)  # (K,)
        image = g @ comp
        context = torch.cat([comp, patches]).unsqueeze(0)
        decoded, _ = self.text_decoder(text.unsqueeze(0), context, context)
        text = text + decoded[0]
        logits = self.logit_scale * F.normalize(text, dim=-1) @ F.normalize(image, dim=-1)
        return logits, g @ proto_attn[0]

    def forward(
        self,
        features: torch.Tensor,
        coords: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        label: torch.Tensor | None = None,
        parent_features: torch.Tensor | None = None,
    ) -> MILOutput:
        if features.ndim != 3 or features.shape[0] == 0:
            raise ValueError(f"ViLa-MIL needs a non-empty hierarchy bag (N5, 16, D), got {tuple(features.shape)}")
        if mask is None:
            mask = features.abs().sum(-1) > 0
        mask = mask.bool()
        if parent_features is None:
            w = mask.to(features.dtype).unsqueeze(-1)
            parent_features = (features * w).sum(1) / w.sum(1).clamp(min=1)
        low_text, high_text = self.class_texts()
        low, weights = self._scale(parent_features, low_text)
        high, _ = self._scale(features[mask], high_text)
        return MILOutput(logits=low + high, attention=weights.detach())
