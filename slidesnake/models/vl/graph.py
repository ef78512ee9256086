"""HiVE-MIL's graph: text-guided filtering (TGDF) and a heterogeneous 5x/20x image-text graph (DESIGN §3).

Node types: ``img5`` (kept 5x patches), ``img20`` (the present children of kept patches, in fixed slots
slot = dy·4 + dx), ``txt5`` (4 coarse descriptions per class), ``txt20`` (3 fine descriptions under each
coarse one). Intra-scale edges join image and text nodes whose similarity survived TGDF; hierarchical
edges join a 5x patch with its children and a coarse description with its own 3 fine descriptions.
The graph is a torch-geometric ``HeteroData``; message passing is PyG ``SAGEConv``-style mean
aggregation inside a scale and edge-softmax attention across scales.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch_geometric.data import HeteroData
from torch_geometric.nn import HeteroConv, SAGEConv
from torch_geometric.utils import scatter, softmax

IMG5, IMG20, TXT5, TXT20 = "img5", "img20", "txt5", "txt20"
INTRA = ((TXT5, "describes", IMG5), (IMG5, "matches", TXT5), (TXT20, "describes", IMG20), (IMG20, "matches", TXT20))
HIER = ((IMG5, "parent_of", IMG20), (IMG20, "child_of", IMG5), (TXT5, "parent_of", TXT20), (TXT20, "child_of", TXT5))


def threshold_mask(sim: torch.Tensor, alpha: float, rows: torch.Tensor | None = None) -> torch.Tensor:
    """Binary TGDF mask: entry (i, t) kept iff sim ≥ μ_t + α·σ_t, the mean and std of text t's column
    over the rows in ``rows`` (bool, all rows by default); rows outside ``rows`` are never kept."""
    if rows is None:
        rows = torch.ones(sim.shape[0], dtype=torch.bool, device=sim.device)
    n = rows.sum().clamp(min=1)
    w = rows.to(sim.dtype).unsqueeze(1)
    mean = (sim * w).sum(0) / n
    std = (((sim - mean) ** 2 * w).sum(0) / (n - 1).clamp(min=1)).sqrt()  # unbiased, as torch.std
    return (sim >= mean + alpha * std) & rows.unsqueeze(1)


def tgdf(
    sim5: torch.Tensor,
    sim20: torch.Tensor,
    child_mask: torch.Tensor,
    fine_parent: torch.Tensor,
    alpha: float = 0.5,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Text-guided dual-scale filtering (paper Alg. 1), on cosine similarities.

    sim5 (N5, T5) parent × coarse text; sim20 (N5, 16, T20) child slot × fine text; child_mask (N5, 16);
    fine_parent (T20,) the coarse text of each fine text. A 5x pair survives at μ+ασ of its text's column;
    a parent survives if any of its pairs does. A 20x pair is gated by its parent's pair with the fine
    text's coarse parent, the gated matrix (S20 ⊙ gate) is re-thresholded per fine text over the present
    children of kept parents, and a pair is kept only where the gate is open too.
    Returns (mask5 (N5, T5), kept parents (N5,), mask20 (N5, 16, T20)).
    """
    mask5 = threshold_mask(sim5, alpha)
    kept = mask5.any(1)
    n5, slots, t20 = sim20.shape
    gate = mask5[:, fine_parent].unsqueeze(1) & child_mask.unsqueeze(2)  # (N5, 16, T20)
    rows = (child_mask & kept.unsqueeze(1)).reshape(-1)
    gated = (sim20 * gate).reshape(n5 * slots, t20)
    mask20 = threshold_mask(gated, alpha, rows).reshape(n5, slots, t20) & gate
    return mask5, kept, mask20


def build_graph(
    x5: torch.Tensor,
    x20: torch.Tensor,
    child_mask: torch.Tensor,
    t5: torch.Tensor,
    t20: torch.Tensor,
    fine_parent: torch.Tensor,
    alpha: float = 0.5,
) -> HeteroData:
    """The HeteroData of one bag: x5 (N5, D) parents, x20 (N5, 16, D) children, t5 (T5, D), t20 (T20, D).

    ``data[IMG20].parent`` and ``.slot`` record each 20x node's parent row and fixed slot; ``data[IMG5].row``
    each 5x node's row in the bag. TGDF runs on cosine similarities, without gradient (a binary mask).
    """
    with torch.no_grad():
        s5 = F.normalize(x5, dim=-1) @ F.normalize(t5, dim=-1).T
        s20 = F.normalize(x20, dim=-1) @ F.normalize(t20, dim=-1).T
        mask5, kept, mask20 = tgdf(s5, s20, child_mask, fine_parent, alpha)
    rows5 = kept.nonzero().squeeze(1)
    new5 = torch.full((x5.shape[0],), -1, dtype=torch.long, device=x5.device)
    new5[rows5] = torch.arange(len(rows5), device=x5.device)
    present = child_mask & kept.unsqueeze(1)
    parent, slot = present.nonzero(as_tuple=True)
    data = HeteroData()
    data[IMG5].x, data[IMG5].row = x5[rows5], rows5
    data[IMG20].x, data[IMG20].parent, data[IMG20].slot = x20[parent, slot], new5[parent], slot
    data[TXT5].x, data[TXT20].x = t5, t20
    i5, j5 = mask5[rows5].nonzero(as_tuple=True)
    i20, j20 = mask20[parent, slot].nonzero(as_tuple=True)
    _both(data, IMG5, TXT5, i5, j5)
    _both(data, IMG20, TXT20, i20, j20)
    child = torch.arange(len(parent), device=x5.device)
    _hier(data, IMG5, IMG20, new5[parent], child)
    fine = torch.arange(len(fine_parent), device=x5.device)
    _hier(data, TXT5, TXT20, fine_parent.to(x5.device), fine)
    return data


def _both(data: HeteroData, img: str, txt: str, i: torch.Tensor, j: torch.Tensor) -> None:
    data[txt, "describes", img].edge_index = torch.stack([j, i])
    data[img, "matches", txt].edge_index = torch.stack([i, j])


def _hier(data: HeteroData, up: str, down: str, parent: torch.Tensor, child: torch.Tensor) -> None:
    data[up, "parent_of", down].edge_index = torch.stack([parent, child])
    data[down, "child_of", up].edge_index = torch.stack([child, parent])


DENSE_LIMIT = 64_000_000  # adjacency entries up to which mean aggregation is a dense product


def mean_adjacency(edge_index: torch.Tensor, n_src: int, n_dst: int, dtype: torch.dtype) -> torch.Tensor | None:
    """Row-normalised dense (n_dst, n_src) adjacency of ``edge_index`` (mean over in-edges), or None if too big.

    Text-image relations are bipartite between a few dozen texts and thousands of patches, so the dense
    matrix is small and its product is cheaper than a per-edge gather (no sorting, no (E, D) copy).
    """
    if n_src * n_dst > DENSE_LIMIT:
        return None
    adj = torch.zeros(n_dst, n_src, dtype=dtype, device=edge_index.device)
    adj[edge_index[1], edge_index[0]] = 1.0
    return adj / adj.sum(1, keepdim=True).clamp(min=1)


class _RowSparseAddmm(torch.autograd.Function):
    """``acc + x @ weightᵀ`` whose backward runs its two products on the rows with a non-zero gradient only.

    The last layer's 20x outputs reach the loss only through the top-k similarities, so their gradient
    is zero outside a few thousand of the ~30,000 rows; skipping zero rows is exact. With a gradient
    that is mostly non-zero (earlier layers) the backward is the plain dense one.
    """

    @staticmethod
    def forward(ctx, acc, x, weight):  # type: ignore[override]
        ctx.save_for_backward(x, weight)
        return torch.addmm(acc, x, weight.t())

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        x, weight = ctx.saved_tensors
        need_acc, need_x, need_w = ctx.needs_input_grad
        rows = grad.any(1).nonzero().squeeze(1) if need_x or need_w else None
        grad_x = grad_w = None
        if rows is not None and 2 * len(rows) < grad.shape[0]:
            g = grad.index_select(0, rows)
            if need_x:
                grad_x = torch.zeros_like(x).index_copy_(0, rows, g @ weight)
            if need_w:
                grad_w = g.t() @ x.index_select(0, rows)
        else:
            grad_x = grad @ weight if need_x else None
            grad_w = grad.t() @ x if need_w else None
        return (grad if need_acc else None), grad_x, grad_w


class SmallSideSAGE(SAGEConv):
    """SAGEConv with mean aggregation, computed in the cheaper order for bipartite text-image relations.

    out_i = lin_l(mean_{j→i} x_j) + lin_r(x_i), as SAGEConv. When sources are fewer than targets (texts →
    patches) lin_l is applied to the sources first: lin_l(mean x_j) = mean(lin_l x_j) for every target with
    a neighbour (a target without one gets lin_r(x_i) alone: a row of the mean adjacency sums to 1 with a
    neighbour and to 0 without, so the bias rides along in the product).
    """

    def forward(self, x, edge_index, size=None, adj=None, acc=None):  # type: ignore[override]
        """``adj``: this relation's :func:`mean_adjacency`, when the caller built it once for every layer;
        ``acc``: a (n_dst, D) tensor the output is added to (inside the products: no extra pass)."""
        x_src, x_dst = x if isinstance(x, tuple) else (x, x)
        n_src, n_dst = x_src.shape[0], x_dst.shape[0]
        if adj is None:
            adj = mean_adjacency(edge_index, n_src, n_dst, x_src.dtype)
        if adj is None:
            out = super().forward((x_src, x_dst), edge_index)
            return out if acc is None else acc + out
        if acc is None:
            acc = x_dst.new_zeros(n_dst, self.lin_l.weight.shape[0])
        if n_src < n_dst:
            acc = torch.addmm(acc, adj, self.lin_l(x_src))
        else:
            acc = acc + self.lin_l(adj @ x_src)
        if self.lin_r.bias is not None:
            acc = acc + self.lin_r.bias
        return _RowSparseAddmm.apply(acc, x_dst, self.lin_r.weight)


class CrossScaleAttention(nn.Module):
    """Attention along hierarchical edges: each target attends over its neighbours at the other scale
    (a parent over its present children, a child over its one parent), softmax over each target's edges.

    The score is bilinear, q_i·k_j = x_i W_q W_kᵀ x_jᵀ, computed on whichever side has fewer nodes; the
    value projection runs on the smaller side too (before pooling for few sources, after it for few
    targets; exact, since a target's weights sum to 1). A target with a single edge (a child) gets weight
    1 without a score (``single_source``). So 32,000 children cost no D×D product.
    """

    def __init__(self, dim: int, attn_dim: int | None = None, single_source: bool = False) -> None:
        super().__init__()
        attn_dim = attn_dim or dim
        self.single_source = single_source  # parent -> child: one source per target, the weight is 1
        if not single_source:
            self.q = nn.Linear(dim, attn_dim, bias=False)
            self.k = nn.Linear(dim, attn_dim, bias=False)
        self.v = nn.Linear(dim, dim)
        self.scale = 1.0 / math.sqrt(attn_dim)

    def forward(self, x_src: torch.Tensor, x_dst: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        src, dst = edge_index
        n_src, n_dst = x_src.shape[0], x_dst.shape[0]
        if len(src) == 0:
            return x_dst.new_zeros(x_dst.shape)
        deg = torch.zeros(n_dst, dtype=x_src.dtype, device=x_src.device).index_add_(
            0, dst, torch.ones_like(dst, dtype=x_src.dtype)
        )
        has = (deg > 0).unsqueeze(1).to(x_src.dtype)
        if self.single_source:
            if int(deg.max()) > 1:
                raise ValueError("a single-source relation has a target with several sources")
            values = self.v(x_src)
            if len(dst) == n_dst:  # every target has its one source: a gather, no zero-filled copy
                return values.index_select(0, torch.empty_like(dst).index_copy_(0, dst, src))
            return x_dst.new_zeros(n_dst, x_dst.shape[1]).index_copy(0, dst, values.index_select(0, src))
        if n_src < n_dst:  # values on the few sources
            values = self.v(x_src)
            key = self.k(x_src) @ self.q.weight  # (n_src, D): x_j W_k W_qᵀ
            score = (x_dst.index_select(0, dst) * key.index_select(0, src)).sum(-1)
            a = softmax(score * self.scale, dst, num_nodes=n_dst)
            return scatter(a.unsqueeze(1) * values.index_select(0, src), dst, 0, dim_size=n_dst, reduce="sum")
        query = self.q(x_dst) @ self.k.weight  # (n_dst, D) on the few targets
        in_order = len(src) == n_src and bool((src == torch.arange(n_src, device=src.device)).all())
        sources = x_src if in_order else x_src.index_select(0, src)  # children in order need no gather
        score = (query.index_select(0, dst) * sources).sum(-1)
        a = softmax(score * self.scale, dst, num_nodes=n_dst)
        pooled = scatter(a.unsqueeze(1) * sources, dst, 0, dim_size=n_dst, reduce="sum")
        return self.v(pooled) * has


def _edges_into(edge_index: torch.Tensor, rows: torch.Tensor, n_dst: int) -> torch.Tensor:
    """The edges of ``edge_index`` whose target is in ``rows``, targets renumbered to their position in ``rows``."""
    pos = torch.full((n_dst,), -1, dtype=torch.long, device=edge_index.device)
    pos[rows] = torch.arange(len(rows), device=edge_index.device)
    dst = pos[edge_index[1]]
    keep = dst >= 0
    return torch.stack([edge_index[0][keep], dst[keep]])


class HiveGraphLayer(nn.Module):
    """One layer: x' = x + Σ intra-scale SAGE (sum over relations, HeteroConv) + Σ cross-scale attention."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.intra = HeteroConv({rel: SmallSideSAGE(dim, dim) for rel in INTRA}, aggr="sum")
        self.hier = nn.ModuleDict(
            {"__".join(rel): CrossScaleAttention(dim, single_source=rel[1] == "parent_of") for rel in HIER}
        )

    def forward(
        self,
        x: dict[str, torch.Tensor],
        data: HeteroData,
        adj: dict | None = None,
        targets: dict[str, torch.Tensor | None] | None = None,
    ) -> dict[str, torch.Tensor]:
        """``adj``: per intra-scale relation its dense mean adjacency (the same edges in every layer, so
        :class:`HiveGraph` builds it once per bag); the HeteroConv sum over relations, relation by relation,
        accumulated onto the residual (each SAGE term inside its own matrix products).

        ``targets``: the node types to compute, each with the rows wanted (a long tensor) or None for all
        rows (default: every type, every row). A row's output depends on its own input row, its in-edges'
        sources and the weights only, so a subset of rows equals those rows of the full output."""
        adj = adj or {}
        if targets is None:
            targets = dict.fromkeys(x)
        out, dst_x = {}, {}
        for node, rows in targets.items():
            dst_x[node] = x[node] if rows is None else x[node].index_select(0, rows)
            out[node] = dst_x[node]

        def edges(rel):
            rows = targets[rel[2]]
            ei = data[rel].edge_index
            return ei if rows is None else _edges_into(ei, rows, x[rel[2]].shape[0])

        for rel in HIER:
            if rel[2] in targets:
                h = self.hier["__".join(rel)](x[rel[0]], dst_x[rel[2]], edges(rel))
                out[rel[2]] = out[rel[2]] + h
        for rel in INTRA:
            if rel[2] not in targets:
                continue
            conv, rows, a = self.intra.convs[rel], targets[rel[2]], adj.get(rel)
            if a is not None and rows is not None:
                a = a.index_select(0, rows)
            out[rel[2]] = conv((x[rel[0]], dst_x[rel[2]]), edges(rel), adj=a, acc=out[rel[2]])
        return out


def _topk_rows(sim: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each column's top-min(k, N) rows of ``sim`` (N, T) as (the distinct rows (R,), each pick's position
    among them (k, T)): ``sim[rows].gather(0, pos)`` are the top-k values (in topk's order)."""
    idx = sim.topk(min(k, sim.shape[0]), dim=0).indices
    return torch.unique(idx, return_inverse=True)


class HiveGraph(nn.Module):
    """``layers`` graph layers with ReLU between them; outputs L2-normalised node features per type."""

    def __init__(self, dim: int, layers: int = 2, dropout: float = 0.0) -> None:
        super().__init__()
        self.layers = nn.ModuleList(HiveGraphLayer(dim) for _ in range(layers))
        self.dropout = nn.Dropout(dropout)

    def _last_inputs(self, data: HeteroData) -> tuple[dict[str, torch.Tensor], dict]:
        """(node features entering the last layer, the intra-scale mean adjacencies)."""
        x = {node: data[node].x for node in (IMG5, IMG20, TXT5, TXT20)}
        adj = {}  # built once per bag, not once per layer
        for rel in INTRA:
            a = mean_adjacency(data[rel].edge_index, x[rel[0]].shape[0], x[rel[2]].shape[0], x[rel[0]].dtype)
            if a is not None:
                adj[rel] = a
        for layer in self.layers[:-1]:
            x = layer(x, data, adj)
            x = {k: self.dropout(F.relu(v)) for k, v in x.items()}
        return x, adj

    def forward(self, data: HeteroData) -> dict[str, torch.Tensor]:
        x, adj = self._last_inputs(data)
        x = self.layers[-1](x, data, adj)
        return {k: F.normalize(v, dim=-1) for k, v in x.items()}

    def topk_scores(self, data: HeteroData, k5: int, k20: int) -> tuple:
        """The graph and its top-k scores, with gradient only where the top-k means have one.

        Returns (normalised text nodes {txt5, txt20}, s5 (N5, T5) and s20 (N20, T20) image-text
        similarities without gradient, per5 (T5,) and per20 (T20,) each text's mean over its top-k image
        nodes, with gradient). The last layer's image outputs are computed once without gradient to find
        the top-k rows; only those rows are recomputed with gradient. The same values as ``forward``
        (a top-k mean's gradient reaches its selected rows only), without the full-size backward of the
        last layer's 32,000 20x rows, their normalisation and their similarity product.
        """
        x, adj = self._last_inputs(data)
        last = self.layers[-1]
        txt = {k: F.normalize(v, dim=-1) for k, v in last(x, data, adj, dict.fromkeys((TXT5, TXT20))).items()}
        with torch.no_grad():
            img = last(x, data, adj, dict.fromkeys((IMG5, IMG20)))
            s5 = F.normalize(img[IMG5], dim=-1) @ txt[TXT5].T
            s20 = F.normalize(img[IMG20], dim=-1) @ txt[TXT20].T
            rows5, pos5 = _topk_rows(s5, k5)
            rows20, pos20 = _topk_rows(s20, k20)
        picked = last(x, data, adj, {IMG5: rows5, IMG20: rows20})
        per5 = (F.normalize(picked[IMG5], dim=-1) @ txt[TXT5].T).gather(0, pos5).mean(0)
        per20 = (F.normalize(picked[IMG20], dim=-1) @ txt[TXT20].T).gather(0, pos20).mean(0)
        return txt, s5, s20, per5, per20
