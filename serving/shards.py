"""A catalog split into N ScaNN shards, queried together and merged to one global top-k.

One index per machine stops at its memory (a 10⁸-item SavedModel would be ~48 GB, docs/scaling.md).
Items are assigned to shards by a stable hash of their id (the same shard in every process and every
export, so a new item lands in one shard and only that shard is rebuilt). Each shard returns its own
top-k; the merge keeps the k best of the N·k, which is exactly the global top-k when every shard is
exact (brute force), and at least as good as each shard's recall otherwise. In a SavedModel the shard
searches are independent ops, so TensorFlow runs them concurrently on its inter-op thread pool.
"""
from __future__ import annotations

import hashlib
import uuid

import numpy as np
import tensorflow as tf

from vistaste.serving.index import IndexParams, build_index


def shard_of(item_ids, n_shards: int) -> np.ndarray:
    """Each item id's shard in ``[0, n_shards)``: the first 8 bytes of its SHA-256, modulo ``n_shards``
    (not Python's ``hash``, which differs between processes)."""
    if n_shards < 1:
        raise ValueError(f"n_shards must be >= 1, got {n_shards}")
    return np.array([int.from_bytes(hashlib.sha256(str(i).encode()).digest()[:8], "big") % n_shards for i in item_ids],
                    dtype=np.int64)


def fingerprint(item_ids: np.ndarray, item_vectors: np.ndarray) -> str:
    """What a shard indexes (ids in order and their float32 vectors): equal fingerprints, same shard."""
    digest = hashlib.sha256()
    digest.update("\0".join(map(str, item_ids)).encode())
    digest.update(np.ascontiguousarray(item_vectors, dtype=np.float32).tobytes())
    return digest.hexdigest()


class ShardedIndex(tf.Module):
    """``index(queries) -> (scores [batch, k], ids [batch, k])``, like one :class:`CatalogScaNN`."""

    def __init__(self, shards: list, fingerprints: list[str], k: int, name: str | None = None):
        super().__init__(name=name)
        if len(shards) != len(fingerprints) or not shards:
            raise ValueError("give one fingerprint per shard, and at least one shard")
        for shard in shards:  # several ScaNN searchers in one graph need names of their own (CatalogScaNN._searcher)
            if hasattr(shard, "searcher_name") and not shard.searcher_name:
                shard.searcher_name = f"vistaste-shard-{uuid.uuid4()}"
        self.shards = list(shards)
        self.fingerprints = list(fingerprints)
        self.k = k

    def __call__(self, queries):
        parts = [shard(queries) for shard in self.shards]  # independent: run concurrently inside a tf.function
        scores = tf.concat([scores for scores, _ in parts], axis=1)
        ids = tf.concat([ids for _, ids in parts], axis=1)
        top, position = tf.math.top_k(scores, tf.minimum(self.k, tf.shape(scores)[1]))
        return top, tf.gather(ids, position, batch_dims=1)

    @property
    def params(self) -> list[IndexParams]:
        return [shard.params for shard in self.shards]


def build_sharded_index(item_ids: np.ndarray, item_vectors: np.ndarray, k: int, n_shards: int,
                        params: IndexParams | None = None, previous: ShardedIndex | None = None,
                        build=None) -> tuple[ShardedIndex, list[int]]:
    """Split the catalog into ``n_shards`` by :func:`shard_of` and index each (``params``, or each shard's
    size's default). With ``previous`` (an index of an earlier catalog, same shard count), a shard whose
    items and vectors are unchanged is reused as it is; only changed shards are rebuilt. ``build(ids,
    vectors, k)``: how one shard is built (default :func:`vistaste.serving.index.build_index`). Returns
    (index, the shards that were built)."""
    item_ids, item_vectors = np.asarray(item_ids), np.asarray(item_vectors, np.float32)
    if previous is not None and len(previous.shards) != n_shards:
        raise ValueError(f"the previous index has {len(previous.shards)} shards, not {n_shards}: rebuild every shard")
    assignment = shard_of(item_ids, n_shards)
    build = build or (lambda ids, vectors, top: build_index(ids, vectors, top, params or IndexParams.for_catalog(len(ids), top)))
    shards, fingerprints, built = [], [], []
    for s in range(n_shards):
        mine = assignment == s
        if not mine.any():
            raise ValueError(f"shard {s} of {n_shards} would be empty ({len(item_ids)} items): use fewer shards")
        digest = fingerprint(item_ids[mine], item_vectors[mine])
        if previous is not None and previous.fingerprints[s] == digest:
            shards.append(previous.shards[s])
        else:
            shards.append(build(item_ids[mine], item_vectors[mine], k))
            built.append(s)
        fingerprints.append(digest)
    return ShardedIndex(shards, fingerprints, k), built
