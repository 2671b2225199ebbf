"""ScaNN retrieval index over (item id, item vector) pairs, with parameters chosen by catalog size.

TFRS's ``factorized_top_k.ScaNN`` always builds a tree + asymmetric-hashing searcher; this subclass
keeps its (id, vector) indexing, search and SavedModel support but lets the searcher be brute force
for small catalogs, hashing + re-scoring for medium ones, and partitioning + hashing + re-scoring for
large ones (the ScaNN authors' rule of thumb), with every parameter overridable.
"""
from __future__ import annotations

import dataclasses
import math
import uuid

import numpy as np
import tensorflow as tf

try:  # one place for the optional heavy import; its ops must be registered before a SavedModel loads
    import scann  # noqa: F401
    from scann.scann_ops.py import scann_ops
except ImportError as exc:  # pragma: no cover - scann is a pinned dependency
    raise ImportError("vistaste.serving needs scann==1.4.2 (pip install 'scann==1.4.2' with tensorflow-cpu~=2.20.0)") from exc

import tensorflow_recommenders as tfrs

from vistaste.towers.config import CANDIDATES


@dataclasses.dataclass(frozen=True)
class IndexParams:
    """How ScaNN searches. ``mode``: "brute_force", "ah" (hashing + reorder) or "tree_ah"."""

    mode: str = "brute_force"
    num_leaves: int = 0
    num_leaves_to_search: int = 0
    dimensions_per_block: int = 2
    reorder: int = 0  # re-score this many candidates exactly (0: no re-scoring)
    training_sample_size: int = 100_000

    def __post_init__(self):
        if self.mode not in ("brute_force", "ah", "tree_ah"):
            raise ValueError(f"mode must be brute_force, ah or tree_ah, got {self.mode!r}")
        if self.mode == "tree_ah" and not 0 < self.num_leaves_to_search <= self.num_leaves:
            raise ValueError(f"tree_ah needs 0 < num_leaves_to_search <= num_leaves, got {self.num_leaves_to_search} and {self.num_leaves}")

    @classmethod
    def for_catalog(cls, n_items: int, k: int = CANDIDATES, **overrides) -> "IndexParams":
        """Brute force under 20k items; hashing + exact re-scoring under 250k; beyond, ~sqrt(n) leaves of
        which 12% are searched, then hashing + re-scoring. Measured (benchmarks/ann.py) to keep recall@100
        against exact search >= 0.95 on the built-in world's dense item vectors."""
        reorder = max(15 * k, 1000)
        if n_items < 20_000:
            params = cls("brute_force")
        elif n_items < 250_000:
            params = cls("ah", reorder=reorder)
        else:
            leaves = int(math.sqrt(n_items))
            params = cls("tree_ah", num_leaves=leaves, num_leaves_to_search=max(3 * leaves // 25, 10), reorder=reorder)
        return dataclasses.replace(params, **overrides)


class CatalogScaNN(tfrs.layers.factorized_top_k.ScaNN):
    """``tfrs.layers.factorized_top_k.ScaNN`` with a searcher built from :class:`IndexParams`."""

    def __init__(self, params: IndexParams, k: int = CANDIDATES, name: str | None = None):
        super().__init__(k=k, distance_measure="dot_product", parallelize_batch_searches=True, name=name)
        self.params = params

        def build_searcher(candidates):
            builder = scann_ops.builder(db=candidates, num_neighbors=self._k, distance_measure="dot_product")
            if params.mode == "brute_force":
                builder = builder.score_brute_force()
            else:
                if params.mode == "tree_ah":
                    builder = builder.tree(num_leaves=params.num_leaves, num_leaves_to_search=params.num_leaves_to_search,
                                           training_sample_size=min(params.training_sample_size, int(candidates.shape[0])))
                builder = builder.score_ah(params.dimensions_per_block, anisotropic_quantization_threshold=0.2)
                if params.reorder:
                    builder = builder.reorder(params.reorder)
            return builder.build(shared_name=f"{self.name}/{uuid.uuid4()}")

        self._build_searcher = build_searcher


def build_index(item_ids: np.ndarray, item_vectors: np.ndarray, k: int = CANDIDATES, params: IndexParams | None = None) -> CatalogScaNN:
    """Index item vectors (float32 [n, d]) under their ids; ``k`` is the number of candidates returned."""
    if len(item_ids) != len(item_vectors):
        raise ValueError(f"ids and vectors must align, got {len(item_ids)} and {len(item_vectors)}")
    if len(item_ids) == 0:
        raise ValueError("cannot index an empty catalog")
    params = params or IndexParams.for_catalog(len(item_ids), k)
    index = CatalogScaNN(params, k=min(k, len(item_ids)))
    index.index(tf.constant(item_vectors, tf.float32), tf.constant(np.asarray(item_ids).astype(str)))
    return index


def exact_top_k(queries: np.ndarray, item_vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Reference answer: dot products + sort. Returns (scores [q, k], rows [q, k])."""
    scores = queries @ item_vectors.T
    rows = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, rows, axis=1), rows
