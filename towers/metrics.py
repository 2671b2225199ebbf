"""Ranking metrics on score matrices. Binary relevance; ties broken by item order.

All functions take ``top``: ``[U, K]`` ranked item rows, and ``relevant``: a list of arrays of item rows.
"""
from __future__ import annotations

import numpy as np

from vistaste.data.vectors import unit_rows


def exclude(scores: np.ndarray, history_rows: np.ndarray, available: np.ndarray | None = None) -> np.ndarray:
    """A float64 copy of ``scores`` [U, N] with each user's history rows (``PAD`` = -1 ignored) and
    unavailable items set to -inf, so they are never recommended."""
    scores = scores.astype(np.float64, copy=True)
    if available is not None:
        scores[:, ~available] = -np.inf
    rows = np.repeat(np.arange(len(scores)), history_rows.shape[1])
    cols = history_rows.ravel()
    keep = cols >= 0
    scores[rows[keep], cols[keep]] = -np.inf
    return scores


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Ranked top-k item rows per user, ``[U, k]`` (``-inf`` scores are never returned ahead of finite ones)."""
    k = min(k, scores.shape[1])
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


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
