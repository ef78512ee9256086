"""IBMIL: interventional bag MIL with a backdoor adjustment over a confounder dictionary.

Lin et al., "Interventional Bag Multi-Instance Learning On Whole-Slide Pathological Images", CVPR 2023.
As the paper and its code: a first-stage model (the same fold's trained ABMIL) embeds every training
bag; k-means (scikit-learn) over those embeddings gives the confounder dictionary (the centroids),
which is then frozen (a registered buffer, saved with the checkpoint, never trained or updated).
The interventional model attends from its bag embedding z to the dictionary,
softmax(W_q z · W_k c / sqrt(d)), and classifies [z ; sum_c a_c c], approximating P(Y | do(X)).
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.cluster import KMeans
from torch import nn

from slidesnake.models.mil.abmil import ABMIL
from slidesnake.models.mil.base import (
    Bag,
    FirstStageError,
    GatedAttention,
    MILModel,
    MILOutput,
    attention_pool,
    embed,
)
from slidesnake.models.registry import register


@register("ibmil", first_stage="abmil")
class IBMIL(MILModel):
    """ABMIL aggregator + backdoor-adjusted bag embedding over ``n_confounders`` frozen prototypes."""

    def __init__(
        self,
        in_dim: int,
        n_outputs: int,
        hidden: int = 256,
        attn_dim: int = 128,
        dropout: float = 0.25,
        n_confounders: int = 8,
        seed: int = 66,
    ) -> None:
        super().__init__(in_dim, n_outputs)
        self.embed = embed(in_dim, hidden, dropout)
        self.attention = GatedAttention(hidden, attn_dim, dropout=dropout)
        self.query = nn.Linear(hidden, attn_dim)
        self.key = nn.Linear(hidden, attn_dim)
        self.classifier = nn.Linear(2 * hidden, n_outputs)
        self.register_buffer("confounders", torch.zeros(n_confounders, hidden))
        self.register_buffer("dictionary_ready", torch.zeros((), dtype=torch.bool))
        self.seed = seed

    @torch.no_grad()
    def init_from_first_stage(self, first_stage: ABMIL, train_bags: list[Bag]) -> None:
        """Confounder dictionary <- k-means centroids of the first-stage ABMIL's training-bag embeddings."""
        k, hidden = self.confounders.shape
        if len(train_bags) < k:
            raise FirstStageError(
                f"IBMIL needs at least n_confounders={k} training bags for its k-means dictionary, got"
                f" {len(train_bags)}; lower the model argument n_confounders (TrainParams.model_kwargs)"
            )
        was_training = first_stage.training
        first_stage.eval()
        z = torch.stack([first_stage.bag_embedding(bag.features)[0] for bag in train_bags]).cpu().numpy()
        first_stage.train(was_training)
        if z.shape[1] != hidden:
            raise FirstStageError(
                f"first-stage ABMIL embeds into {z.shape[1]} dims but IBMIL's hidden is {hidden}; use the same"
                " model argument hidden (TrainParams.model_kwargs) for both"
            )
        kmeans = KMeans(n_clusters=k, n_init=10, random_state=self.seed).fit(z.astype(np.float64))
        self.confounders.copy_(torch.as_tensor(kmeans.cluster_centers_, dtype=self.confounders.dtype))
        self.dictionary_ready.fill_(True)

    def forward(self, features: torch.Tensor, coords=None, mask=None, label=None) -> MILOutput:
        if not bool(self.dictionary_ready):
            raise FirstStageError(
                "IBMIL's confounder dictionary is empty: call init_from_first_stage() with the same fold's"
                " trained ABMIL before training (train abmil on this fold first)"
            )
        h = self.embed(features)
        z, weights = attention_pool(h, self.attention(h))
        conf = self.confounders
        att = torch.softmax(self.key(conf) @ self.query(z) / self.query.out_features**0.5, dim=0)  # (K,)
        return MILOutput(logits=self.classifier(torch.cat([z, att @ conf])), attention=weights)
