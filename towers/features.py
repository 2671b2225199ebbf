"""From tables to model inputs: the item feature table and users' click histories.

An id and its vector travel together: :class:`ItemTable` keeps ``ids[i]`` beside ``vectors[i]`` and
``tags[i]`` and is the only place that maps item ids to rows.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd

from vistaste.data.contract import POSITIVE_EVENTS
from vistaste.data.pca import VectorPCA

PAD = -1  # history slot without an item


@dataclasses.dataclass
class ItemTable:
    """Per-item model inputs, row-aligned: ``ids[n]``, ``vectors[n, d]``, ``tags[n, t]`` (multi-hot)."""

    ids: np.ndarray
    vectors: np.ndarray
    tags: np.ndarray
    tag_vocabulary: list[str]
    created_at: np.ndarray | None = None

    def __post_init__(self):
        if not (len(self.ids) == len(self.vectors) == len(self.tags)):
            raise ValueError(f"ids, vectors and tags must align, got {len(self.ids)}, {len(self.vectors)}, {len(self.tags)}")
        if not np.isfinite(self.vectors).all():
            row = int(np.flatnonzero(~np.isfinite(self.vectors).all(axis=1))[0])
            raise ValueError(f"item vector for {str(self.ids[row])!r} (row {row}) contains NaN or infinity")
        self._row = {item: i for i, item in enumerate(self.ids)}
        if len(self._row) != len(self.ids):
            raise ValueError("duplicate item ids in the item table")

    def __len__(self) -> int:
        return len(self.ids)

    def rows(self, item_ids, unknown: str = "raise") -> np.ndarray:
        """Row of each id; ``unknown="raise"`` names the first unknown id, ``"pad"`` maps it to PAD."""
        rows = np.fromiter((self._row.get(i, PAD) for i in item_ids), dtype=np.int64, count=len(item_ids))
        if unknown == "raise" and (rows == PAD).any():
            missing = [str(i) for i, r in zip(item_ids, rows) if r == PAD]
            raise KeyError(f"{len(missing)} item id(s) have no vector, e.g. {missing[:3]}; embed them or pass unknown='pad'")
        return rows

    @classmethod
    def build(cls, item_ids: np.ndarray, vectors: np.ndarray, catalog: pd.DataFrame | None = None, max_tags: int = 256) -> "ItemTable":
        """Join vectors with the catalog's tags and creation times (items without a catalog row get none)."""
        item_ids = np.asarray(item_ids).astype(str)
        tag_lists = [[] for _ in item_ids]
        created = None
        if catalog is not None:
            indexed = catalog.assign(item_id=catalog["item_id"].astype(str)).set_index("item_id")
            if "tags" in indexed:
                tag_text = indexed["tags"].reindex(item_ids)
                tag_lists = [str(t).split() if isinstance(t, str) else [] for t in tag_text]
            if "created_at" in indexed:
                created = indexed["created_at"].reindex(item_ids).to_numpy()
        counts = pd.Series([t for tags in tag_lists for t in tags], dtype=object).value_counts()
        vocabulary = sorted(counts.index[:max_tags].tolist())
        position = {t: i for i, t in enumerate(vocabulary)}
        tags = np.zeros((len(item_ids), len(vocabulary)), np.float32)
        for row, tag_list in enumerate(tag_lists):
            for tag in tag_list:
                if tag in position:
                    tags[row, position[tag]] = 1.0
        return cls(item_ids, np.asarray(vectors, np.float32), tags, vocabulary, created)

    def with_projection(self, pca: VectorPCA | None) -> "ItemTable":
        if pca is None:
            return self
        return dataclasses.replace(self, vectors=pca.transform(self.vectors))

    def save(self, path: str | Path) -> None:
        np.savez(path, ids=self.ids, vectors=self.vectors, tags=self.tags, tag_vocabulary=np.array(self.tag_vocabulary, dtype=object))

    @classmethod
    def load(cls, path: str | Path) -> "ItemTable":
        arrays = np.load(path, allow_pickle=True)
        return cls(arrays["ids"], arrays["vectors"], arrays["tags"], list(arrays["tag_vocabulary"]))


def positives(interactions: pd.DataFrame) -> pd.DataFrame:
    """Clicks and saves, one per (user, item, day): a save right after a click is not a second positive."""
    pos = interactions[interactions["event"].isin(POSITIVE_EVENTS)]
    day = pos["timestamp"].dt.floor("D")
    pos = pos.assign(_day=day).drop_duplicates(["user_id", "item_id", "_day"]).drop(columns="_day")
    return pos.sort_values(["timestamp"], kind="stable").reset_index(drop=True)


def histories_before_each(events: pd.DataFrame, item_rows: np.ndarray, length: int) -> np.ndarray:
    """For each row of ``events`` (time-sorted positives), the user's previous ``length`` item rows,
    oldest first, left-padded with PAD: shape [len(events), length]."""
    order = np.lexsort((np.arange(len(events)), events["user_id"].to_numpy()))  # by user, then time (stable)
    users = events["user_id"].to_numpy()[order]
    rows_sorted = item_rows[order]
    starts = np.r_[0, np.flatnonzero(users[1:] != users[:-1]) + 1]
    group_start = np.repeat(starts, np.diff(np.r_[starts, len(users)]))
    position = np.arange(len(users))
    idx = position[:, None] - np.arange(length, 0, -1)[None, :]
    hist_sorted = np.where(idx >= group_start[:, None], rows_sorted[np.clip(idx, 0, None)], PAD)
    out = np.empty_like(hist_sorted)
    out[order] = hist_sorted
    return out


def pad_history(rows, length: int) -> np.ndarray:
    """The last ``length`` of ``rows`` (oldest first), PAD-left to ``length``: one user's history slots.

    >>> pad_history([4, 5, 6], 2).tolist(), pad_history([4], 3).tolist()
    ([5, 6], [-1, -1, 4])
    """
    rows = np.asarray(rows, dtype=np.int64)[-length:] if length else np.zeros(0, np.int64)
    return np.concatenate([np.full(length - len(rows), PAD, dtype=np.int64), rows])


def latest_histories(events: pd.DataFrame, item_rows: np.ndarray, users: np.ndarray, length: int) -> np.ndarray:
    """Each user's last ``length`` positive item rows in ``events`` (oldest first, PAD-left): [len(users), length]."""
    out = np.full((len(users), length), PAD, dtype=np.int64)
    if len(events) == 0:
        return out
    frame = pd.DataFrame({"user_id": events["user_id"].to_numpy(), "row": item_rows, "order": np.arange(len(events))})
    tail = frame.sort_values("order").groupby("user_id", sort=False).tail(length)
    lookup = {u: i for i, u in enumerate(users)}
    for user, rows in tail.groupby("user_id", sort=False)["row"]:
        if user in lookup:
            out[lookup[user]] = pad_history(rows.to_numpy(), length)
    return out
