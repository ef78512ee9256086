"""Retrieval prediction: a query spot's expression = the mean of its top-k reference spots' expression.

``average`` (BLEEP/HECLIP, k = 50), ``simple`` (k = 1) and ``weighted`` (BLEEP's weighted_average:
weights exp(-(d² - d²_min + 1)) over the top k, d the distance between L2-normalised embeddings).
Queries are processed in chunks: similarities (chunk x R), the top-k selection and a sparse weight
matrix (chunk x R, k non-zeros per row) times the reference expression (R x G), so memory is bounded by
the chunk, never the (Q x k x G) gather.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

METHODS = ("average", "simple", "weighted")


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def topk_weights(sims: np.ndarray, k: int, method: str = "average") -> tuple[np.ndarray, np.ndarray]:
    """(indices (q, k), weights (q, k) summing to one per row) of the top-k cosine similarities."""
    if method not in METHODS:
        raise ValueError(f"retrieval method {method!r}; use one of {METHODS}")
    k = 1 if method == "simple" else min(k, sims.shape[1])
    idx = np.argpartition(-sims, k - 1, axis=1)[:, :k] if k < sims.shape[1] else np.tile(np.arange(k), (len(sims), 1))
    top = np.take_along_axis(sims, idx, axis=1)
    if method == "weighted":
        d2 = 2.0 - 2.0 * top  # squared distance of unit vectors
        w = np.exp(-(d2 - d2.min(axis=1, keepdims=True) + 1.0))
    else:
        w = np.ones_like(top)
    return idx, (w / w.sum(axis=1, keepdims=True)).astype(np.float32)


def retrieve(
    query: np.ndarray,
    reference: np.ndarray,
    reference_expression: np.ndarray,
    *,
    k: int = 50,
    method: str = "average",
    chunk: int = 1024,
) -> np.ndarray:
    """(Q, G) predicted expression of the queries from the reference spots (cosine similarity)."""
    if len(reference) != len(reference_expression):
        raise ValueError(f"{len(reference)} reference embeddings but {len(reference_expression)} expression rows")
    q, r = _unit(query), _unit(reference)
    expr = np.asarray(reference_expression, dtype=np.float32)
    out = np.empty((len(q), expr.shape[1]), dtype=np.float32)
    for start in range(0, len(q), chunk):
        sims = q[start : start + chunk] @ r.T
        idx, w = topk_weights(sims, k, method)
        rows = np.repeat(np.arange(len(sims)), idx.shape[1])
        weights = sp.csr_matrix((w.ravel(), (rows, idx.ravel())), shape=(len(sims), len(r)))
        out[start : start + len(sims)] = weights @ expr
    return out
