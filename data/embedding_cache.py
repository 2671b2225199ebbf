"""The embedding cache: vectors keyed by (backbone cache key, content hash) in atomic Parquet shards,
with an LRU of loaded shards and compaction, so a killed `vistaste embed` resumes and a re-run embeds
only new or changed images."""
from __future__ import annotations

import time
import uuid
from collections import OrderedDict
from pathlib import Path

import numpy as np

from vistaste.data.io import (
    VectorTableWriter,
    write_vectors,
)
from vistaste.data.vectors import _read_vector_table


class EmbeddingCache:
    """Vectors keyed by image content hash, stored as Parquet shards under ``root/cache_key``.

    Each shard is written atomically, so a killed run keeps every stored shard, and :meth:`compact`
    merges the small shards that incremental runs leave behind. Only the keys live
    in memory (key -> shard); vectors are read back a shard at a time through a small LRU bounded in
    rows, so memory stays flat however large the catalog (100k x 1280 floats would be 0.5 GB).
    """

    def __init__(self, root: str | Path, cache_key: str, rows_in_memory: int = 20_000):
        import pyarrow.parquet as pq

        self.directory = Path(root) / cache_key
        self.directory.mkdir(parents=True, exist_ok=True)
        self._shard_of: dict[str, Path] = {}
        self._shard_rows: dict[Path, int] = {}
        for shard in sorted(self.directory.glob("shard-*.parquet")):
            keys = pq.read_table(shard, columns=["content_hash"]).column(0).to_pylist()
            self._shard_of.update(dict.fromkeys(keys, shard))
            self._shard_rows[shard] = len(keys)
        self._recent: OrderedDict[Path, dict[str, np.ndarray]] = OrderedDict()  # LRU of read shards
        self._rows_in_memory = rows_in_memory

    def __contains__(self, key: str) -> bool:
        return key in self._shard_of

    def __len__(self) -> int:
        return len(self._shard_of)

    def keys(self) -> frozenset[str]:
        """Every content hash stored (what a run may skip)."""
        return frozenset(self._shard_of)

    @property
    def shards(self) -> int:
        return len(self._shard_rows)

    def _shard(self, path: Path) -> dict[str, np.ndarray]:
        if path in self._recent:
            self._recent.move_to_end(path)
            return self._recent[path]
        keys, vectors = _read_vector_table(path, "content_hash")
        rows = dict(zip(keys, vectors))
        self._recent[path] = rows
        while len(self._recent) > 1 and sum(len(r) for r in self._recent.values()) > self._rows_in_memory:
            self._recent.popitem(last=False)
        return rows

    def get_many(self, keys: list[str]) -> np.ndarray:
        """Vectors for ``keys``, in order. Shards are read in order of first use and kept in a small
        LRU, so keys in the order they were embedded (the catalog's) read each shard about once."""
        return np.stack([self._shard(self._shard_of[key])[key] for key in keys]).astype(np.float32, copy=False)

    def add(self, keys: list[str], vectors: np.ndarray) -> None:
        if not keys:
            return
        shard = self.directory / f"shard-{time.time_ns()}-{uuid.uuid4().hex[:6]}.parquet"
        write_vectors(shard, keys, vectors, id_column="content_hash")
        self._shard_of.update(dict.fromkeys(keys, shard))
        self._shard_rows[shard] = len(keys)

    def compact(self, target_rows: int = 1024) -> int:
        """Merge runs of consecutive small shards into shards of about ``target_rows`` rows, streamed
        one shard at a time; returns how many shards were merged away. A merged shard is written
        (atomically) before its parts are deleted, so a crash in between leaves duplicates, not gaps."""
        before = self.shards
        group: list[Path] = []
        for shard in sorted(self._shard_rows):
            if self._shard_rows[shard] >= target_rows:
                continue
            group.append(shard)
            if sum(self._shard_rows[g] for g in group) >= target_rows:
                self._merge(group)
                group = []
        if len(group) > 1:
            self._merge(group)
        return before - self.shards

    def _merge(self, group: list[Path]) -> None:
        # Named after its first part, so shards still sort in the order they were embedded.
        merged = group[0].with_name(f"{group[0].stem}-merged.parquet")
        keys, vectors = _read_vector_table(group[0], "content_hash")
        merged_keys: list[str] = []
        with VectorTableWriter(merged, vectors.shape[1], id_column="content_hash") as writer:
            for number, part in enumerate(group):
                if number:
                    keys, vectors = _read_vector_table(part, "content_hash")
                writer.write(keys, vectors)
                merged_keys.extend(keys)
        self._shard_of.update(dict.fromkeys(merged_keys, merged))
        self._shard_rows[merged] = len(merged_keys)
        for part in group:
            del self._shard_rows[part]
            self._recent.pop(part, None)
            part.unlink()
