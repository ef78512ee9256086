"""Patch-GCN: graph convolutions over the k-nearest-neighbour graph of patch positions.

Chen et al., "Whole Slide Images are 2D Point Clouds: Context-Aware Survival Prediction using
Patch-based Graph Convolutional Networks", MICCAI 2021. Each patch is a node linked to its k=8
spatial neighbours. As the reference (mahmoodlab/Patch-GCN ``PatchGCN_Surv``): a Linear-ReLU-Dropout
instance embedding, a GENConv (softmax aggregation with a learnt temperature, torch-geometric) and
then residual DeepGCN blocks (GENConv -> LayerNorm -> ReLU, + input, dropout 0.1), the outputs of
every stage concatenated (width 4 x hidden), then path_phi (Linear-ReLU-Dropout), a gated-attention
readout and path_rho on that full width. Softmax aggregation lies between the mean and the max of a
node's neighbour messages, so a lone focus patch is not averaged away.
Known limit, measured: on features of a random-weight encoder (tiny-clip on demo_hard) the ReLUs
of path_phi die within a few epochs (active units 48% -> 0.4%: the instances share one dominant
direction, so one step moves every instance's pre-activation alike) and the output stays constant
(training loss ln 2). demo_hard therefore runs on demo-clip (pretrained in the pipeline), where at the
reference's lr 2e-4 it scores per-patient AUC 0.893 [0.748, 0.979] (5 folds, pooled within folds)
against mean pooling's 0.734 [0.556, 0.887]. The reference also accumulates gradients over 32 bags
(--gc 32): training.accumulate_by_model.
A training bag larger than ``max_instances`` is cropped to a spatially contiguous disc (the nearest
``max_instances`` patches of a random patch), not a random subset: the graph then links the same
neighbours at the same spacing as the full-bag graph evaluation sees.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.spatial import cKDTree
from torch import nn
from torch_geometric.nn import DeepGCNLayer, GENConv

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


def edge_index(neighbours: torch.Tensor) -> torch.Tensor:
    """(2, N*k) torch-geometric edges (source = neighbour, target = node) of a (N, k) neighbour table."""
    n, k = neighbours.shape
    target = torch.arange(n, device=neighbours.device).repeat_interleave(k)
    return torch.stack([neighbours.reshape(-1), target])


def _genconv(dim: int) -> GENConv:
    """The reference's graph convolution: softmax aggregation, learnt temperature, 2-layer MLP with LayerNorm."""
    return GENConv(dim, dim, aggr="softmax", t=1.0, learn_t=True, num_layers=2, norm="layer")


@register("patchgcn", inputs=("features", "coords"))
class PatchGCN(MILModel):
    """kNN graph on coords -> GENConv + residual DeepGCN blocks (concatenated) -> gated-attention readout."""

    map_shows = "gated-attention weight of each patch after graph convolution"

    def __init__(
        self,
        in_dim: int,
        n_outputs: int,
        hidden: int = 128,
        attn_dim: int | None = None,
        dropout: float = 0.25,
        n_layers: int = 3,
        k: int = 8,
        graph_dropout: float = 0.1,
    ) -> None:
        super().__init__(in_dim, n_outputs)
        if n_layers < 1:
            raise ValueError(f"Patch-GCN needs n_layers >= 1 graph convolutions, got {n_layers}")
        self.embed = embed(in_dim, hidden, dropout)
        self.first_conv = _genconv(hidden)  # the reference's layers[0].conv: a bare convolution
        self.layers = nn.ModuleList(
            DeepGCNLayer(_genconv(hidden), nn.LayerNorm(hidden), nn.ReLU(), block="res", dropout=graph_dropout)
            for _ in range(n_layers - 1)
        )
        width = hidden * (n_layers + 1)
        self.path_phi = embed(width, width, dropout)
        self.attention = GatedAttention(width, attn_dim or width, dropout=dropout)  # reference: D = L = width
        self.path_rho = embed(width, width, dropout)
        self.classifier = nn.Linear(width, n_outputs)
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
        edges = edge_index(knn_graph(coords, self.k))
        x = self.embed(features)
        outs = [x]
        x = self.first_conv(x, edges)
        outs.append(x)
        for layer in self.layers:
            x = layer(x, edges)
            outs.append(x)
        h = self.path_phi(torch.cat(outs, dim=1))
        pooled, weights = attention_pool(h, self.attention(h))
        return MILOutput(logits=self.classifier(self.path_rho(pooled)), attention=weights)
