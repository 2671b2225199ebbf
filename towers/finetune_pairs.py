"""Fine-tuning's positive pairs, mined from the training period only: what it learns from
(:func:`training_items`), the tag-family weights and co-clicks behind the pairs, and the samplers that draw
batches of them with their accidental-hit masks (:func:`mine_pairs` picks one for the run's positives).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import scipy.sparse

from vistaste.data.io import DatasetPathError, resolve_all_inside
from vistaste.data.split import split_log
from vistaste.towers.features import positives as positive_events
from vistaste.towers.finetune_config import FinetuneConfig


def tag_family(tag: str) -> str:
    """``palette:ocean`` -> ``palette``; a tag without a prefix is its own family."""
    return tag.split(":", 1)[0] if ":" in tag else tag


def parse_tags(values) -> list[list[str]]:
    """The catalog's ``tags`` cells (space-separated text, or missing) as lists."""
    return [str(v).split() if isinstance(v, str) else [] for v in values]


def coclick_pairs(logs: pd.DataFrame, window: pd.Timedelta) -> pd.DataFrame:
    """Pairs of different items one user clicked (or saved) within ``window`` of each other.

    Returns ``item_a < item_b`` (as strings) and ``count``, the number of such co-clicks. Positives are
    :func:`vistaste.towers.features.positives` (a save right after its click is not a second one).

    >>> t = pd.Timestamp("2026-01-01", tz="UTC")
    >>> logs = pd.DataFrame({"user_id": ["u"] * 3, "item_id": ["b", "a", "c"], "event": ["click"] * 3,
    ...                      "timestamp": [t, t + pd.Timedelta("10min"), t + pd.Timedelta("3h")]})
    >>> coclick_pairs(logs, pd.Timedelta("1h")).to_dict("records")
    [{'item_a': 'a', 'item_b': 'b', 'count': 1}]
    """
    pos = positive_events(logs).sort_values(["user_id", "timestamp"], kind="stable")
    users, items = pos["user_id"].to_numpy(), pos["item_id"].astype(str).to_numpy()
    times = pos["timestamp"].to_numpy()
    firsts, seconds = [], []
    # Sorted by user then time: if event i+k is out of the window (or another user's), so is every i+k+j.
    for k in range(1, len(pos)):
        near = (users[k:] == users[:-k]) & (times[k:] - times[:-k] <= np.timedelta64(window))
        if not near.any():
            break
        firsts.append(items[:-k][near])
        seconds.append(items[k:][near])
    a = np.concatenate(firsts) if firsts else np.array([], dtype=str)
    b = np.concatenate(seconds) if seconds else np.array([], dtype=str)
    keep = a != b
    pairs = pd.DataFrame({"item_a": np.minimum(a[keep], b[keep]), "item_b": np.maximum(a[keep], b[keep])})
    return pairs.groupby(["item_a", "item_b"], sort=True).size().rename("count").reset_index()


def tag_family_weights(item_ids, item_tags: list[list[str]], logs: pd.DataFrame) -> tuple[pd.DataFrame, float]:
    """How much more often than chance items sharing a tag of each family are clicked by the same user.

    Over the items of ``item_ids`` that ``logs`` has positives for: ``share_any`` is the share of their
    pairs that at least one user clicked both of; per family ``f``, ``share`` is that share among pairs
    sharing a family-``f`` tag (a pair counted once per tag it shares), ``lift = share / share_any`` and
    ``weight = max(lift - 1, 0)``: 0 for a family that says nothing about what users click together.
    Returns ``(frame indexed by family, share_any)``.
    """
    index = {item: row for row, item in enumerate(np.asarray(item_ids).astype(str))}
    pos = positive_events(logs)
    rows = pos["item_id"].astype(str).map(index)
    pos, rows = pos[rows.notna()], rows[rows.notna()].astype(np.int64).to_numpy()
    clicked, local = np.unique(rows, return_inverse=True)
    n = len(clicked)
    if n < 2:
        raise ValueError(f"the training period has positives on {n} item(s); tag weights need co-clicks (use tag_weighting='raw')")
    users = pd.factorize(pos["user_id"])[0]
    clicks = scipy.sparse.csr_matrix((np.ones(len(local)), (users, local)), shape=(users.max() + 1, n))
    clicks.data[:] = 1.0
    together = scipy.sparse.triu(clicks.T @ clicks, k=1).tocoo()  # item pairs some user clicked both of
    share_any = together.nnz / (n * (n - 1) / 2)
    if together.nnz == 0:
        raise ValueError("no user clicked two items in the training period: tag weights cannot be measured (use tag_weighting='raw')")
    vocabulary = sorted({t for r in clicked for t in item_tags[r]})
    if not vocabulary:
        raise ValueError("no clicked item has a tag")
    position = {t: i for i, t in enumerate(vocabulary)}
    entries = [(k, position[t]) for k, r in enumerate(clicked) for t in set(item_tags[r])]
    k_rows, t_cols = map(np.array, zip(*entries))
    has = scipy.sparse.csr_matrix((np.ones(len(entries)), (k_rows, t_cols)), shape=(n, len(vocabulary)))
    per_tag_together = np.asarray(has[together.row].multiply(has[together.col]).sum(axis=0)).ravel()
    per_tag_items = np.asarray(has.sum(axis=0)).ravel()
    frame = pd.DataFrame({"family": [tag_family(t) for t in vocabulary], "tags": 1, "items": per_tag_items,
                          "pairs": per_tag_items * (per_tag_items - 1) / 2, "coclicked": per_tag_together})
    frame = frame.groupby("family").sum()
    frame["share"] = frame["coclicked"] / frame["pairs"].where(frame["pairs"] > 0)
    frame["lift"] = frame["share"] / share_any
    frame["weight"] = (frame["lift"] - 1.0).clip(lower=0.0).fillna(0.0)
    return frame, share_any


class TagPairs:
    """Draws pairs of items sharing a tag: tag ``t`` with probability proportional to
    ``weight[t] x C(n_t, 2)`` (``n_t`` items carry it), then two different items carrying it, so a pair
    comes up in proportion to the summed weights of the tags it shares. ``item_tags`` is row-aligned."""

    def __init__(self, item_tags: list[list[str]], tag_weight: Callable[[str], float]):
        members: dict[str, list[int]] = {}
        for row, tags in enumerate(item_tags):
            for tag in set(tags):
                members.setdefault(tag, []).append(row)
        self.tags = sorted(t for t, rows in members.items() if len(rows) >= 2 and tag_weight(t) > 0)
        if not self.tags:
            raise ValueError("no tag with a positive weight is shared by two training items: nothing to learn from tags")
        self.sizes = np.array([len(members[t]) for t in self.tags])
        mass = np.array([tag_weight(t) for t in self.tags]) * self.sizes * (self.sizes - 1) / 2
        self.probability = mass / mass.sum()
        self.offsets = np.r_[0, np.cumsum(self.sizes)[:-1]]
        self.members = np.concatenate([members[t] for t in self.tags])
        entries = [(row, k) for k, t in enumerate(self.tags) for row in members[t]]
        rows, cols = map(np.array, zip(*entries))
        self.has = scipy.sparse.csr_matrix((np.ones(len(entries), bool), (rows, cols)), shape=(len(item_tags), len(self.tags)))

    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(a_rows, b_rows, mask)``: pair i is (a_i, b_i) sharing tag t_i; ``mask[i, j]`` (i != j) marks
        another positive in the batch: b_j carries t_i, or a_i carries t_j."""
        tag = rng.choice(len(self.tags), n, p=self.probability)
        size = self.sizes[tag]
        first = np.floor(rng.random(n) * size).astype(np.int64)
        second = np.floor(rng.random(n) * (size - 1)).astype(np.int64)
        second += second >= first  # a different member, uniformly
        a, b = self.members[self.offsets[tag] + first], self.members[self.offsets[tag] + second]
        b_has = self.has[b][:, tag].toarray().T  # [i, j]: b_j carries t_i
        a_has = self.has[a][:, tag].toarray()  # [i, j]: a_i carries t_j
        return a, b, (b_has | a_has) & ~np.eye(n, dtype=bool)


class ListedPairs:
    """Draws listed pairs (rows ``a``, ``b``) in proportion to ``weight``, in a random order within the
    pair; ``mask[i, j]`` marks b_j that is a_i itself or listed with it."""

    def __init__(self, a: np.ndarray, b: np.ndarray, weight: np.ndarray, n_items: int):
        if len(a) == 0:
            raise ValueError("no positive pairs in the training period: nothing to learn from")
        self.a, self.b, self.n_items = np.asarray(a, np.int64), np.asarray(b, np.int64), n_items
        self.probability = np.asarray(weight, float) / np.sum(weight)
        self.keys = np.unique(np.r_[self.a * n_items + self.b, self.b * n_items + self.a])

    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pick = rng.choice(len(self.a), n, p=self.probability)
        swap = rng.random(n) < 0.5
        a, b = np.where(swap, self.b[pick], self.a[pick]), np.where(swap, self.a[pick], self.b[pick])
        related = (a[:, None] == b[None, :]) | np.isin(a[:, None] * self.n_items + b[None, :], self.keys)
        return a, b, related & ~np.eye(n, dtype=bool)


class SameImagePairs:
    """Augmentation positives: each pair is one item twice (two augmentations are made of it later);
    items are drawn without replacement while there are enough; ``mask`` marks the same item again."""

    def __init__(self, n_items: int):
        if n_items < 2:
            raise ValueError(f"augmentation pairs need at least 2 training images, got {n_items}")
        self.n_items = n_items

    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        rows = rng.choice(self.n_items, n, replace=n > self.n_items)
        return rows, rows, (rows[:, None] == rows[None, :]) & ~np.eye(n, dtype=bool)


@dataclasses.dataclass
class TrainingItems:
    """What fine-tuning learns from: the items that existed during the training period (row-aligned)."""

    ids: np.ndarray
    paths: list[Path]
    tags: list[list[str]]
    logs: pd.DataFrame  # the training period's events
    period: dict
    skipped: dict


def training_items(dataset_dir: str | Path, config: FinetuneConfig) -> TrainingItems:
    """Load and validate the dataset, split its log like `vistaste train`, and keep the catalog items with
    an image that existed by the end of the training period (``created_at`` at or before its last event)."""
    from vistaste.data.validation import load_dataset

    tables, _ = load_dataset(dataset_dir, on_error="raise", check_images=False)
    catalog, logs = tables["catalog"], tables.get("interactions")
    if logs is None or logs.empty:
        raise ValueError(f"{dataset_dir}: no interactions; the training period (and co-clicks) come from the log")
    if "image_path" not in catalog or catalog["image_path"].isna().all():
        raise ValueError(f"{dataset_dir}: the catalog has no image_path; fine-tuning needs images")
    split = split_log(logs, config.split_spec())
    train = split.train
    end = train["timestamp"].max()
    keep = catalog["image_path"].notna().to_numpy().copy()
    skipped = {"no_image_path": int((~keep).sum())}
    if "created_at" in catalog:
        created = pd.to_datetime(catalog["created_at"], utc=True)
        later = (created > end).to_numpy() & keep
        skipped["created_after_training_period"] = int(later.sum())
        keep &= ~later
    chosen = catalog[keep]
    resolved = resolve_all_inside(dataset_dir, chosen["image_path"].astype(str).tolist())
    inside = np.array([not isinstance(p, DatasetPathError) for p in resolved])
    skipped["image_path_outside_dataset"] = int((~inside).sum())
    chosen = chosen[inside]
    period = {"protocol": split.spec.protocol(), "start": str(train["timestamp"].min()), "end": str(end), "events": len(train),
              "val_start": str(split.val_start), "test_start": str(split.test_start)}
    return TrainingItems(chosen["item_id"].astype(str).to_numpy(), [p for p, ok in zip(resolved, inside) if ok],
                         parse_tags(chosen["tags"]) if "tags" in chosen else [[] for _ in range(len(chosen))], train, period, skipped)


def mine_pairs(items: TrainingItems, config: FinetuneConfig) -> tuple[object, dict]:
    """The pair sampler for ``config.positives`` over ``items`` (training period only), and what was found."""
    if config.positives == "augment":
        return SameImagePairs(len(items.ids)), {"pairs": "two augmentations of each training image"}
    if config.positives == "coclicks":
        pairs = coclick_pairs(items.logs, pd.Timedelta(minutes=config.coclick_window_minutes))
        row = {item: r for r, item in enumerate(items.ids)}
        pairs = pairs[pairs["item_a"].isin(row) & pairs["item_b"].isin(row)]
        sampler = ListedPairs(pairs["item_a"].map(row).to_numpy(), pairs["item_b"].map(row).to_numpy(), pairs["count"].to_numpy(),
                              len(items.ids))
        return sampler, {"distinct_pairs": len(pairs), "coclicks": int(pairs["count"].sum()),
                         "items_in_pairs": int(len(set(pairs["item_a"]) | set(pairs["item_b"]))),
                         "window_minutes": config.coclick_window_minutes}
    if config.tag_weighting == "raw":
        family_weight, info = {}, {"tag_weighting": "raw: every tag family weighs 1"}
        weight = lambda tag: 1.0  # noqa: E731
    else:
        frame, share_any = tag_family_weights(items.ids, items.tags, items.logs)
        family_weight = frame["weight"].to_dict()
        info = {"tag_weighting": "coclick-lift: max(share of tag-sharing pairs co-clicked / share of any pair co-clicked - 1, 0)",
                "share_any_pair_coclicked": share_any, "families": frame.reset_index().to_dict("records")}
        weight = lambda tag: family_weight.get(tag_family(tag), 0.0)  # noqa: E731
    sampler = TagPairs(items.tags, weight)
    info.update({"tags_used": len(sampler.tags), "family_weights": family_weight or "all 1",
                 "pair_share_by_family": pd.Series(sampler.probability, index=[tag_family(t) for t in sampler.tags])
                 .groupby(level=0).sum().round(4).to_dict()})
    return sampler, info
