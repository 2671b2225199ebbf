"""Ranking metrics on score matrices. Binary relevance; ties broken by a fixed random permutation of items.

All functions take ``top``: ``[U, K]`` ranked item rows, and ``relevant``: a list of arrays of item rows.
"""
from __future__ import annotations

import numpy as np

from vistaste.data.vectors import unit_rows


def exclude(scores: np.ndarray, hidden, available: np.ndarray | None = None) -> np.ndarray:
    """A float64 copy of ``scores`` [U, N] with each user's hidden item rows and unavailable items set
    to -inf, so they are never recommended. ``hidden``: a list of row arrays (any lengths) or a
    ``[U, L]`` array padded with ``PAD`` = -1."""
    scores = scores.astype(np.float64, copy=True)
    if available is not None:
        scores[:, ~available] = -np.inf
    lengths = [len(h) for h in hidden]
    rows = np.repeat(np.arange(len(scores)), lengths)
    cols = np.concatenate([np.asarray(h, dtype=np.int64).ravel() for h in hidden]) if len(hidden) else np.zeros(0, np.int64)
    keep = cols >= 0
    scores[rows[keep], cols[keep]] = -np.inf
    return scores


def tie_break(n_items: int, seed: int = 0) -> np.ndarray:
    """A fixed random rank per item, used as the secondary sort key: items with identical scores (e.g.
    identical feature vectors) are ordered by it, never by id or catalog order."""
    return np.random.default_rng(seed).permutation(n_items)


def top_k(scores: np.ndarray, k: int, tie_ranks: np.ndarray | None = None) -> np.ndarray:
    """Ranked top-k item rows per user, ``[U, k]`` (``-inf`` scores are never returned ahead of finite
    ones). Equal scores are ordered by ``tie_ranks`` (default :func:`tie_break`)."""
    k = min(k, scores.shape[1])
    tie_ranks = tie_break(scores.shape[1]) if tie_ranks is None else tie_ranks
    kth = -np.partition(-scores, k - 1, axis=1)[:, k - 1:k]  # the k-th largest score per user
    out = np.empty((len(scores), k), dtype=np.int64)
    for u in range(len(scores)):
        candidates = np.flatnonzero(scores[u] >= kth[u, 0])  # every item tied at the boundary competes
        order = np.lexsort((tie_ranks[candidates], -scores[u, candidates]))
        out[u] = candidates[order[:k]]
    return out


def recall_per_user(top: np.ndarray, relevant: list[np.ndarray], k: int) -> np.ndarray:
    """|top-k ∩ relevant| / |relevant| for each user."""
    return np.array([np.isin(rel, row[:k]).sum() / len(rel) for row, rel in zip(top, relevant)], dtype=np.float64)


def recall(top: np.ndarray, relevant: list[np.ndarray], k: int) -> float:
    """Mean over users of |top-k ∩ relevant| / |relevant|."""
    return float(recall_per_user(top, relevant, k).mean()) if len(relevant) else 0.0


def ndcg(top: np.ndarray, relevant: list[np.ndarray], k: int) -> float:
    """Mean over users of DCG@k / ideal DCG@k with gains 1/log2(rank + 1)."""
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    values = []
    for row, rel in zip(top, relevant):
        gains = np.isin(row[:k], rel).astype(float)
        ideal = discounts[: min(len(rel), k)].sum()
        values.append((gains * discounts[: len(gains)]).sum() / ideal)
    return float(np.mean(values)) if values else 0.0


def mrr(top: np.ndarray, relevant: list[np.ndarray]) -> float:
    """Mean reciprocal rank of the first relevant item within ``top`` (0 when none is there)."""
    values = []
    for row, rel in zip(top, relevant):
        hits = np.flatnonzero(np.isin(row, rel))
        values.append(1.0 / (hits[0] + 1) if len(hits) else 0.0)
    return float(np.mean(values)) if values else 0.0


def coverage(top: np.ndarray, n_items: int, k: int) -> float:
    """Share of the catalog that appears in at least one user's top-k."""
    return float(len(np.unique(top[:, :k])) / n_items) if n_items else 0.0


def intra_list_diversity(top: np.ndarray, item_vectors: np.ndarray, k: int) -> float:
    """Mean pairwise cosine distance between the top-k items of each list, averaged over users."""
    unit = unit_rows(item_vectors)
    values = []
    for row in top[:, :k]:
        v = unit[row]
        sims = v @ v.T
        n = len(row)
        if n > 1:
            values.append(1.0 - (sims.sum() - np.trace(sims)) / (n * (n - 1)))
    return float(np.mean(values)) if values else 0.0


def novelty(top: np.ndarray, item_popularity: np.ndarray, k: int) -> float:
    """Mean self-information -log2 p(item) of recommended items, p from (smoothed) training clicks."""
    p = (item_popularity + 1.0) / (item_popularity.sum() + len(item_popularity))
    return float(np.mean(-np.log2(p[top[:, :k]])))
