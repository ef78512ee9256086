"""Patch-GCN: graph convolutions over the k-nearest-neighbour graph of patch positions.

Chen et al., "Whole Slide Images are 2D Point Clouds: Context-Aware Survival Prediction using
Patch-based Graph Convolutional Networks", MICCAI 2021. Each patch is a node linked to its k=8
spatial neighbours; residual GCN layers mix context, the layer outputs are concatenated, and a
gated-attention readout gives the slide. Plain torch + scipy's KD-tree (no torch_geometric).
A training bag larger than ``max_instances`` is cropped to a spatially contiguous disc (the nearest
``max_instances`` patches of a random patch), not a random subset: the graph then links the same
neighbours at the same spacing as the full-bag graph evaluation sees.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.spatial import cKDTree
from torch import nn

from slidesnake.models.mil.base import (
    Bag,
    GatedAttention,
    MILModel,
    MILOutput,
    MissingCoordsError,
    attention_pool,
    embed,
)
from slidesnake.models.registry import register


def knn_graph(coords: torch.Tensor, k: int = 8) -> torch.Tensor:
    """(N, k') neighbour indices (self excluded, k' = min(k, N-1)) from a KD-tree: O(N log N) memory-light."""
    n = coords.shape[0]
    kk = min(k, n - 1)
    if kk <= 0:
        return torch.zeros((n, 0), dtype=torch.long, device=coords.device)
    _, idx = cKDTree(coords.detach().cpu().numpy().astype(np.float64)).query(coords.detach().cpu().numpy(), k=kk + 1)
    return torch.as_tensor(np.asarray(idx)[:, 1:], dtype=torch.long, device=coords.device)


class _GCNLayer(nn.Module):
    """h' = h + ReLU(LayerNorm(W [h ; mean of neighbours]))  (a residual GraphSAGE-style layer)."""

    def __init__(self, dim: int, dropout: float) -> None:
        super().__init__()
        self.linear = nn.Linear(2 * dim, dim)
        self.norm = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, h: torch.Tensor, neighbours: torch.Tensor) -> torch.Tensor:
        agg = h[neighbours].mean(dim=1) if neighbours.shape[1] else torch.zeros_like(h)
        return h + self.dropout(torch.relu(self.norm(self.linear(torch.cat([h, agg], dim=1)))))


@register("patchgcn", inputs=("features", "coords"))
class PatchGCN(MILModel):
    """kNN graph on coords -> residual GCN layers (concatenated) -> gated-attention readout."""

    map_shows = "gated-attention weight of each patch after graph convolution"

    def __init__(
        self,
        in_dim: int,
        n_outputs: int,
        hidden: int = 128,
        attn_dim: int = 128,
        dropout: float = 0.25,
        n_layers: int = 3,
        k: int = 8,
    ) -> None:
        super().__init__(in_dim, n_outputs)
        self.embed = embed(in_dim, hidden, dropout)
        self.layers = nn.ModuleList(_GCNLayer(hidden, dropout) for _ in range(n_layers))
        width = hidden * (n_layers + 1)
        self.project = nn.Sequential(nn.Linear(width, hidden), nn.ReLU(), nn.Dropout(dropout))
        self.attention = GatedAttention(hidden, attn_dim, dropout=dropout)
        self.classifier = nn.Linear(hidden, n_outputs)
        self.k = k

    def training_bag(self, bag: Bag, max_instances: int, generator: torch.Generator) -> Bag:
        """A contiguous disc of ``max_instances`` patches around a random one (the whole bag if smaller)."""
        if max_instances <= 0 or len(bag) <= max_instances:
            return bag
        if bag.coords is None:
            raise MissingCoordsError("Patch-GCN needs patch coords (the features h5 'coords' dataset) to crop a bag")
        xy = bag.coords.detach().cpu().numpy().astype(np.float64)
        centre = int(torch.randint(0, len(bag), (1,), generator=generator))
        _, idx = cKDTree(xy).query(xy[centre], k=max_instances)
        return bag.rows(torch.as_tensor(np.sort(idx), dtype=torch.long, device=bag.features.device))

    def forward(self, features: torch.Tensor, coords=None, mask=None, label=None) -> MILOutput:
        if coords is None:
            raise MissingCoordsError(
                "Patch-GCN needs patch coords (the features h5 'coords' dataset) to build its graph"
            )
        neighbours = knn_graph(coords, self.k)
        h = self.embed(features)
        outs = [h]
        for layer in self.layers:
            h = layer(h, neighbours)
            outs.append(h)
        h = self.project(torch.cat(outs, dim=1))
        pooled, weights = attention_pool(h, self.attention(h))
        return MILOutput(logits=self.classifier(pooled), attention=weights)
