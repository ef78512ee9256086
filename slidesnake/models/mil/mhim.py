"""MHIM-MIL: masked hard instance mining with a momentum teacher.

Tang et al., "Multiple Instance Learning Framework with Masked Hard Instance Mining for Whole Slide
Image Classification", ICCV 2023. A teacher scores the instances; the student (ABMIL) trains on the
bag with a random part of the most-attended (easy) instances masked, so it must learn the hard ones,
plus a consistency loss toward the teacher's bag embedding. As in the reference (``teacher_init``),
the teacher starts from the same fold's trained ABMIL and then follows the student by EMA (decay
0.9997); the student starts from scratch (reference ``init_stu_type='none'``); the consistency loss
is the soft-target cross-entropy of the embeddings, teacher temperature 0.1, student 1.0.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from slidesnake.models.mil.abmil import ABMIL
from slidesnake.models.mil.base import Bag, FirstStageError, MILModel, MILOutput
from slidesnake.models.registry import register


def soft_target_cross_entropy(
    student: torch.Tensor, teacher: torch.Tensor, temp_teacher: float = 0.1, temp_student: float = 1.0
) -> torch.Tensor:
    """sum_d -softmax(teacher / t_t)_d * log_softmax(student / t_s)_d over the last axis (MHIM's cl_loss)."""
    target = torch.softmax(teacher.detach() / temp_teacher, dim=-1)
    return -(target * F.log_softmax(student / temp_student, dim=-1)).sum(dim=-1).mean()


@register("mhim", first_stage="abmil")
class MHIMMIL(MILModel):
    """ABMIL student + ABMIL teacher (initialised from the fold's ABMIL, then EMA); masking in training only."""

    map_shows = "student attention weight of each instance (no masking at inference)"

    def __init__(
        self,
        in_dim: int,
        n_outputs: int,
        hidden: int = 256,
        attn_dim: int = 128,
        dropout: float = 0.25,
        mask_ratio: float = 0.5,
        top_fraction: float = 0.1,
        momentum: float = 0.9997,
        consistency_weight: float = 0.5,
        temperature: float = 0.1,
    ) -> None:
        super().__init__(in_dim, n_outputs)
        self.student = ABMIL(in_dim, n_outputs, hidden, attn_dim, dropout)
        self.teacher = copy.deepcopy(self.student).requires_grad_(False)
        self.register_buffer("teacher_initialised", torch.zeros((), dtype=torch.bool))
        self.mask_ratio, self.top_fraction = mask_ratio, top_fraction
        self.momentum, self.consistency_weight, self.temperature = momentum, consistency_weight, temperature

    def init_from_first_stage(self, first_stage: ABMIL, train_bags: list[Bag]) -> None:
        """Teacher <- the fold's trained ABMIL (all weights); the student keeps its random init."""
        try:
            self.teacher.load_state_dict(first_stage.state_dict())
        except RuntimeError as err:
            raise FirstStageError(
                f"MHIM's teacher must have the first-stage ABMIL's shape (model_kwargs hidden/attn_dim): {err}"
            ) from None
        self.teacher.requires_grad_(False)
        self.teacher_initialised.fill_(True)

    def forward(self, features: torch.Tensor, coords=None, mask=None, label=None) -> MILOutput:
        if not self.training:
            return self.student(features)
        if not bool(self.teacher_initialised):
            raise FirstStageError(
                "MHIM trains only after init_from_first_stage(): its teacher is the same fold's trained ABMIL"
                " (train abmil on this fold first)"
            )
        self._update_teacher()
        with torch.no_grad():
            self.teacher.eval()
            teacher_bag, teacher_weights = self.teacher.bag_embedding(features)
        keep = self.hard_instances(teacher_weights)
        pooled, weights = self.student.bag_embedding(features[keep])
        full = torch.zeros(features.shape[0], device=features.device)
        full[keep] = weights
        consistency = soft_target_cross_entropy(pooled, teacher_bag, self.temperature)
        return MILOutput(
            logits=self.student.classifier(pooled), attention=full, aux_loss=self.consistency_weight * consistency
        )

    def hard_instances(self, weights: torch.Tensor) -> torch.Tensor:
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
