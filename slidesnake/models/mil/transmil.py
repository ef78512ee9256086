"""TransMIL: transformer MIL with Nystrom self-attention and the PPEG positional encoding.

Shao et al., "TransMIL: Transformer based Correlated Multiple Instance Learning for Whole Slide Image
Classification", NeurIPS 2021. Instances are squared into a grid, a class token is prepended, two
Nystrom attention layers model correlations and PPEG (depth-wise convs 7/5/3) encodes position.
The heatmap is the class token's attention row of the last layer (Nystrom-approximated, mean over
heads). A training bag larger than ``max_instances`` is cropped to a square window of the full
bag's token grid, so PPEG's convolutions see the same neighbours as at evaluation.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from slidesnake.models.mil.base import Bag, Dropout, MILModel, MILOutput, embed, grid_window
from slidesnake.models.registry import register


class NystromAttention(nn.Module):
    """Multi-head self-attention approximated with m landmarks (Xiong et al., AAAI 2021): O(N m) memory."""

    def __init__(
        self, dim: int, heads: int = 8, landmarks: int = 256, pinv_iterations: int = 6, dropout: float = 0.1
    ) -> None:
        super().__init__()
        self.heads, self.landmarks, self.pinv_iterations = heads, landmarks, pinv_iterations
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        self.out = nn.Sequential(nn.Linear(dim, dim), Dropout(dropout, inplace=True))  # on the Linear's own output
        self.residual_conv = nn.Conv2d(heads, heads, (33, 1), padding=(16, 0), groups=heads, bias=False)

    def forward(self, x: torch.Tensor, cls_row: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Attention output (n, dim) and, if ``cls_row``, token 0's attention over all n tokens (heads, n)."""
        n, dim = x.shape
        m = min(self.landmarks, n)
        pad = (m - n % m) % m
        x_pad = F.pad(x, (0, 0, pad, 0))  # front padding, as in the reference implementation
        q, k, v = self.qkv(x_pad).view(n + pad, 3, self.heads, -1).permute(1, 2, 0, 3)  # 3 x (h, L, d)
        group = (n + pad) // m
        # the scale goes on the (h, m, d) landmarks, not on q (h, L, d): (s q) k_l^T = q (s k_l)^T
        q_l = q.reshape(self.heads, m, group, -1).mean(dim=2) * self.scale
        k_l = k.reshape(self.heads, m, group, -1).mean(dim=2)
        kernel1 = torch.softmax(q @ (k_l * self.scale).transpose(-1, -2), dim=-1)
        kernel2 = torch.softmax(q_l @ k_l.transpose(-1, -2), dim=-1)
        kernel3 = torch.softmax(q_l @ k.transpose(-1, -2), dim=-1)
        inv = _pinv(kernel2, self.pinv_iterations)
        out = kernel1 @ (inv @ (kernel3 @ v))
        out = out + banded_conv(v, self.residual_conv.weight)
        out = out.permute(1, 0, 2).reshape(n + pad, dim)[pad:]
        row = (kernel1[:, pad : pad + 1] @ inv @ kernel3)[:, 0, pad:] if cls_row else None
        return self.out(out), row


def banded_conv(v: torch.Tensor, weight: torch.Tensor, block: int = 32) -> torch.Tensor:
    """The Nystromformer residual: a per-head convolution along the sequence, ``F.conv2d(v[None], weight,
    padding=(K//2, 0), groups=h)[0]`` for v (h, L, d) and weight (h, 1, K, 1), as batched matrix products.

    Each block of ``block`` output rows is one (block, block+K-1) banded Toeplitz matrix of the head's K
    taps times the block's window of v (an unfold view). The same sums as the depthwise conv (to float
    rounding) at about 0.7x its forward + backward time on CPU, where depthwise conv's weight gradient is slow.
    """
    h, n, d = v.shape
    k = weight.shape[2]
    r = k // 2
    blocks = -(-n // block)
    windows = F.pad(v, (0, 0, r, r + blocks * block - n)).unfold(1, block + 2 * r, block)  # (h, blocks, d, B+2r)
    taps = torch.arange(block, device=v.device).unsqueeze(1) + torch.arange(k, device=v.device)  # (B, K)
    band = v.new_zeros(h, block, block + 2 * r).scatter(
        2, taps.expand(h, block, k), weight.reshape(h, 1, k).expand(h, block, k)
    )
    out = torch.einsum("hbc,hndc->hnbd", band, windows)  # (h, blocks, B, d)
    return out.reshape(h, blocks * block, d)[:, :n]


def _pinv(x: torch.Tensor, iterations: int) -> torch.Tensor:
    """Iterative Moore-Penrose pseudo-inverse (Razavi et al.) used by Nystromformer."""
    abs_x = x.abs()
    z = x.transpose(-1, -2) / (abs_x.sum(dim=-1).max() * abs_x.sum(dim=-2).max())
    eye = torch.eye(x.shape[-1], device=x.device, dtype=x.dtype)
    for _ in range(iterations):
        xz = x @ z
        z = 0.25 * z @ (13 * eye - xz @ (15 * eye - xz @ (7 * eye - xz)))
    return z


class PPEG(nn.Module):
    """Pyramid position encoding generator: depth-wise 7x7 + 5x5 + 3x3 convs over the squared token grid."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(dim, dim, k, padding=k // 2, groups=dim) for k in (7, 5, 3))

    def forward(self, tokens: torch.Tensor, side: int) -> torch.Tensor:
        """Token t of the grid sits at (t // side, t % side). The grid is viewed as NCHW with channels-last
        strides (no transposed copy in or out; oneDNN's depthwise convs run natively in that layout)."""
        cls, grid = tokens[:1], tokens[1:]
        g = grid.view(1, side, side, -1).permute(0, 3, 1, 2)
        out = self.convs[0](g)  # summed in place into the first conv's output (its backward keeps only g)
        for conv in self.convs[1:]:
            out += conv(g)
        out += g
        return torch.cat([cls, out.permute(0, 2, 3, 1).reshape(side * side, -1)])


@register("transmil")
class TransMIL(MILModel):
    """Class token + 2 Nystrom transformer layers with PPEG between them."""

    map_shows = "class-token attention row of the last Nystrom layer (mean over heads)"

    def __init__(self, in_dim: int, n_outputs: int, hidden: int = 512, heads: int = 8, dropout: float = 0.25) -> None:
        super().__init__(in_dim, n_outputs)
        self.fc = embed(in_dim, hidden, dropout)
        self.cls_token = nn.Parameter(torch.randn(1, hidden) * 0.02)
        self.norm1, self.norm2, self.norm = nn.LayerNorm(hidden), nn.LayerNorm(hidden), nn.LayerNorm(hidden)
        self.layer1 = NystromAttention(hidden, heads, landmarks=hidden // 2)
        self.layer2 = NystromAttention(hidden, heads, landmarks=hidden // 2)
        self.ppeg = PPEG(hidden)
        self.classifier = nn.Linear(hidden, n_outputs)

    def training_bag(self, bag: Bag, max_instances: int, generator: torch.Generator) -> Bag:
        """A square window of the full bag's token grid with at most ``max_instances`` instances."""
        if max_instances <= 0 or len(bag) <= max_instances:
            return bag
        side = math.ceil(math.sqrt(len(bag)))
        return bag.rows(grid_window(len(bag), side, math.isqrt(max_instances), generator))

    def forward(self, features: torch.Tensor, coords=None, mask=None, label=None) -> MILOutput:
        h = self.fc(features)
        n = h.shape[0]
        side = math.ceil(math.sqrt(n))
        # class token, then the instances wrap-padded to a square (as in the paper), in one copy
        tokens = torch.cat([self.cls_token, h, h[: side * side - n]])
        tokens = tokens + self.layer1(self.norm1(tokens))[0]
        tokens = self.ppeg(tokens, side)
        out, row = self.layer2(self.norm2(tokens), cls_row=not self.training)
        tokens = tokens + out
        cls = self.norm(tokens[0])
        attention = None
        if row is not None:  # class-token attention over instance tokens; wrap-padded copies add to their source
            a = row.mean(dim=0)[1:]
            attention = a[:n].clone()
            attention[: a.shape[0] - n] += a[n:]
        return MILOutput(logits=self.classifier(cls), attention=attention)
