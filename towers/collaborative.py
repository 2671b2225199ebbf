"""The collaborative term of the model's score: implicit ALS factors beside the towers.

On real logs the towers' ranking is accurate but narrow (MovieLens-100K's temporal split: 2.8x the items
most-popular's top 10s cover), and ALS's is broad (5.2x) at about the same accuracy; their blend
``towers + gamma * ALS`` is more accurate than either and broad (``benchmarks/cf_blend.py``). The blend is one
dot product over concatenated vectors, ``[towers, gamma * x_u] . [towers, y_i]``, so the ScaNN index, the
exported model and evaluation keep one scoring path; an item without a training click (cold, or new
since training) gets factors mapped from its content (below).

``y_i``: ALS item factors fitted on the training positives (``implicit``, confidence ``1 + alpha`` per
consumed item); items without a click in it get factors predicted from their content (a ridge map
fitted on the clicked items), so a cold item is not ranked as if disliked. ``x_u``: the user's factors
solved from *everything they consumed* (not the towers' last items: folded in from the last 20 the blend
lost its gain), the weighted least squares of Hu, Koren &
Volinsky (2008) with the item factors fixed::

    x_u = (Y^T Y + alpha * Y_u^T Y_u + lambda * I)^-1  (1 + alpha) * Y_u^T 1

over the user's distinct consumed items ``Y_u``. The same solve runs here (numpy), in
:class:`~vistaste.towers.trained.TrainedTwoTower` and in the exported SavedModel. ``gamma`` is chosen on the
validation slice (:data:`BETAS` times the ratio of the two score spreads), 0 when the term does not help.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd

from vistaste.data.io import atomic_path
from vistaste.towers.features import PAD, ItemTable

# ALS's settings: those `evaluate` chose on MovieLens-100K's validation slice on most seeds.
FACTORS = 32
REGULARIZATION = 0.1
ALPHA = 1.0
ITERATIONS = 15
# Tried on validation: gamma = beta * (spread of the towers' scores / spread of ALS's). 0 keeps the towers alone.
BETAS = (0.0, 0.25, 0.5, 1.0)
CONTENT_RIDGE = 1.0  # the content map's ridge penalty (item vectors are unit length, tags 0/1)


@dataclasses.dataclass
class Collaborative:
    """ALS item factors (``item_ids``-aligned) and the weight ``gamma`` the user factors are scaled by."""

    item_ids: np.ndarray
    item_factors: np.ndarray  # [N, factors] float32
    regularization: float = REGULARIZATION
    alpha: float = ALPHA
    gamma: float = 0.0
    # Y^T Y over every fitted item, kept when the factors are re-ordered for another table (:meth:`aligned`),
    # so each user's solve does not depend on which items a table holds.
    fitted_gram: np.ndarray | None = dataclasses.field(default=None, repr=False)
    # Ridge map from an item's content (:func:`content`) to its factors, fitted on the items with clicks:
    # the factors of items without any (cold items, new ones), so they are not ranked as if disliked.
    content_map: np.ndarray | None = dataclasses.field(default=None, repr=False)

    @classmethod
    def fit(cls, positives: pd.DataFrame, table: ItemTable, gamma: float = 0.0, seed: int = 0, factors: int = FACTORS,
            regularization: float = REGULARIZATION, alpha: float = ALPHA) -> "Collaborative":
        """ALS on ``positives`` (``user_id``, ``row`` of ``table``, ``timestamp``) with implicit's solver."""
        from vistaste.towers.baselines import ALS

        als = ALS(factors, regularization, alpha, ITERATIONS, random_state=seed).fit(positives, table)
        item_factors = als.item_factors_.astype(np.float64)
        clicked = np.bincount(positives["row"].to_numpy().astype(np.int64), minlength=len(table)) > 0
        x = content(table)
        content_map = np.linalg.solve(x[clicked].T @ x[clicked] + CONTENT_RIDGE * np.eye(x.shape[1]), x[clicked].T @ item_factors[clicked])
        item_factors[~clicked] = x[~clicked] @ content_map
        return cls(np.asarray(table.ids).astype(str), item_factors.astype(np.float32), regularization, alpha, gamma,
                   content_map=content_map.astype(np.float32))

    @property
    def factors(self) -> int:
        return int(self.item_factors.shape[1])

    def gram(self) -> np.ndarray:
        """``Y^T Y + lambda I`` (float64), the part of every user's system that does not depend on them."""
        if self.fitted_gram is not None:
            return self.fitted_gram + self.regularization * np.eye(self.factors)
        y = self.item_factors.astype(np.float64)
        return y.T @ y + self.regularization * np.eye(self.factors)

    def user_factors(self, consumed: list[np.ndarray]) -> np.ndarray:
        """``[U, factors]`` float32: each user's ``x_u`` from the item rows they consumed (PAD and duplicates
        ignored; no items: zeros)."""
        y = self.item_factors.astype(np.float64)
        gram = self.gram()
        out = np.zeros((len(consumed), self.factors), np.float32)
        for u, rows in enumerate(consumed):
            rows = np.unique(np.asarray(rows, dtype=np.int64))
            rows = rows[(rows != PAD) & (rows >= 0) & (rows < len(y))]
            if len(rows):
                mine = y[rows]
                out[u] = np.linalg.solve(gram + self.alpha * mine.T @ mine, (1.0 + self.alpha) * mine.sum(axis=0))
        return out

    def user_part(self, towers: np.ndarray, consumed: list[np.ndarray]) -> np.ndarray:
        """The user vectors the model scores with: the towers' ``[U, d]`` vectors, then ``gamma`` times each
        user's factors solved from the item rows they ``consumed`` (the one place the two are joined)."""
        return np.concatenate([towers, self.gamma * self.user_factors(consumed)], axis=1)

    def item_part(self, towers: np.ndarray, item_ids, item_content: np.ndarray | None = None) -> np.ndarray:
        """The item vectors the model scores with: the towers' ``[N, d]`` vectors, then each item's factors
        (:meth:`item_factors_for`)."""
        return np.concatenate([towers, self.item_factors_for(item_ids, item_content)], axis=1)

    def item_factors_for(self, item_ids, item_content: np.ndarray | None = None) -> np.ndarray:
        """``[len(item_ids), factors]`` float32: each id's factors; for ids fitted without (new items) the
        content map's prediction from ``item_content`` (row-aligned, :func:`content`), else zeros."""
        index = pd.Index(self.item_ids)
        at = index.get_indexer(np.asarray(item_ids).astype(str))
        new = np.zeros((len(at), self.factors), np.float32)
        if item_content is not None and self.content_map is not None and (at < 0).any():
            new[at < 0] = item_content[at < 0] @ self.content_map
        return np.where((at >= 0)[:, None], self.item_factors[np.maximum(at, 0)], new).astype(np.float32)

    def aligned(self, item_ids, item_content: np.ndarray | None = None) -> "Collaborative":
        """The same term with its factors in the order of ``item_ids`` (another table's rows; new items by
        their ``item_content``, as :meth:`item_factors_for`)."""
        gram = self.gram() - self.regularization * np.eye(self.factors)
        return dataclasses.replace(self, item_ids=np.asarray(item_ids).astype(str),
                                   item_factors=self.item_factors_for(item_ids, item_content), fitted_gram=gram)

    # ------------------------------------------------------------------------------------ persistence
    def save(self, path: str | Path) -> None:
        with atomic_path(Path(path)) as tmp, open(tmp, "wb") as stream:
            np.savez(stream, item_ids=self.item_ids.astype(str), item_factors=self.item_factors,
                     settings=np.array([self.regularization, self.alpha, self.gamma]),
                     content_map=self.content_map if self.content_map is not None else np.zeros((0, self.factors), np.float32))

    @classmethod
    def load(cls, path: str | Path) -> "Collaborative":
        with np.load(path, allow_pickle=False) as data:
            regularization, alpha, gamma = (float(v) for v in data["settings"])
            content_map = data["content_map"] if "content_map" in data.files and len(data["content_map"]) else None
            return cls(data["item_ids"].astype(str), data["item_factors"].astype(np.float32), regularization, alpha, gamma,
                       content_map=content_map)


def content(table: ItemTable) -> np.ndarray:
    """``[N, d + t + 1]`` float64: what the content map reads of each item (its vector, its tags, a bias)."""
    return np.hstack([table.vectors, table.tags, np.ones((len(table), 1))]).astype(np.float64)


def spread_ratio(towers: np.ndarray, collaborative: np.ndarray) -> float:
    """std(towers' finite scores) / std(ALS's): beta times this is gamma (each term then counts as z-scored)."""
    finite = np.isfinite(towers) & np.isfinite(collaborative)
    spread = collaborative[finite].std() if finite.any() else 0.0
    return float(towers[finite].std() / spread) if spread > 0 else 0.0
