"""Trends: time-decayed click velocity per item and per tag, the one home of the trend feature.

Training chooses how strongly trends lift a user's candidates (on validation), evaluation measures that
ranking, and serving applies it, all through :class:`TrendTracker`.
"""
from __future__ import annotations

import dataclasses
from typing import Iterable

import numpy as np
import pandas as pd

MEMORY_HALF_LIVES = 8  # clicks older than this many half-lives weigh < 0.4%: exports keep only the newer ones
# "Popular now": the popular fallback (users with nothing to go on) and the recent most-popular baseline
# count clicks over this many days before the log's last click.
RECENT_POPULARITY_DAYS = 7.0


def recent_popularity(rows: np.ndarray, timestamps, n_items: int, days: float = RECENT_POPULARITY_DAYS) -> np.ndarray:
    """Clicks per item row (float64, length ``n_items``) within ``days`` before the last of ``timestamps``;
    rows < 0 (items outside the table) are skipped but their clicks still date the log's end.

    >>> ts = pd.to_datetime(["2026-01-01", "2026-01-05", "2026-01-09", "2026-01-10"], utc=True)
    >>> recent_popularity(np.array([0, 1, 1, -1]), ts, 3).tolist()  # the first click is 9 days old
    [0.0, 2.0, 0.0]
    """
    rows = np.asarray(rows, dtype=np.int64)
    if len(rows) == 0:
        return np.zeros(n_items)
    timestamps = pd.Series(pd.to_datetime(timestamps, utc=True)).to_numpy()
    keep = (timestamps >= timestamps.max() - np.timedelta64(int(days * 86_400), "s")) & (rows >= 0)
    return np.bincount(rows[keep], minlength=n_items).astype(np.float64)


@dataclasses.dataclass(frozen=True)
class TrendSetting:
    """How serving lifts candidates: ``relevance += weight * TrendTracker(half_life_hours, tag_share)``.

    ``slots``: how many of a ranking's first places the boosted order fills; every later place follows the
    model's own order (a slate with a few trending-for-you places and the rest personal: on MovieLens-100K
    it keeps the boost's accuracy with a broader feed). 0: every place is ranked by the boosted score.
    """

    half_life_hours: float = 24.0
    tag_share: float = 0.5
    weight: float = 0.0
    slots: int = 0

    def tracker(self) -> TrendTracker:
        return TrendTracker(self.half_life_hours, self.tag_share)

    def describe(self) -> str:
        """One line for logs and reports, e.g. "half-life 72 h, tag share 0.5, weight 0.31, first 4 places"."""
        places = f"first {self.slots} places" if self.slots > 0 else "every place"
        return f"half-life {self.half_life_hours:g} h, tag share {self.tag_share:g}, weight {self.weight:.4g}, {places}"

    def memory(self) -> pd.Timedelta:
        """How far back clicks still matter (``MEMORY_HALF_LIVES`` half-lives)."""
        return pd.Timedelta(hours=self.half_life_hours * MEMORY_HALF_LIVES)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict | None) -> "TrendSetting":
        return cls(**{f.name: values[f.name] for f in dataclasses.fields(cls) if f.name in values}) if values else cls()

    def catalog_scores(self, clicks: pd.DataFrame, now: pd.Timestamp, item_ids,
                       item_tags: dict[str, list[str]] | None = None) -> np.ndarray:
        """Each of ``item_ids``' trend in [0, 1] at ``now``, scaled over all of them (pass the whole catalog:
        evaluation and serving then agree), from ``clicks`` (item_id, timestamp) within :meth:`memory` before it.

        Velocity is measured at the latest click known by ``now``, not at ``now`` itself: a live service
        (clicks seconds old) sees no difference, and a model served over a log that ended weeks ago ranks
        by what was trending when the log ended instead of by nothing.
        """
        item_ids = [str(i) for i in item_ids]
        clicks = clicks[clicks["timestamp"] <= now]
        if len(clicks):
            now = min(now, clicks["timestamp"].max())
        clicks = clicks[clicks["timestamp"] >= now - self.memory()]
        scores = self.tracker().fit(clicks, now, item_tags).scores(item_ids, item_tags)
        return np.array([scores[i] for i in item_ids], dtype=np.float64)


class TrendTracker:
    """Time-decayed click velocity per item and per tag.

    velocity(item, now) = Σ_clicks 2^(-(now - t) / half_life) ; the item's trend score blends its own
    velocity with its tags' (so a new item in a trending style is lifted too), scaled to [0, 1].
    """

    def __init__(self, half_life_hours: float = 24.0, tag_share: float = 0.5):
        if half_life_hours <= 0:
            raise ValueError(f"half_life_hours must be positive, got {half_life_hours}")
        self.half_life_hours = half_life_hours
        self.tag_share = tag_share
        self.item_velocity_: dict[str, float] = {}
        self.tag_velocity_: dict[str, float] = {}

    def fit(self, clicks: pd.DataFrame, now: pd.Timestamp, item_tags: dict[str, list[str]] | None = None) -> "TrendTracker":
        """``clicks``: item_id, timestamp (UTC). Clicks after ``now`` are ignored."""
        clicks = clicks[clicks["timestamp"] <= now]
        age_hours = (now - clicks["timestamp"]).dt.total_seconds().to_numpy() / 3600.0
        weight = np.power(2.0, -age_hours / self.half_life_hours)
        item_velocity = pd.Series(weight, index=clicks["item_id"].to_numpy()).groupby(level=0).sum()
        self.item_velocity_ = item_velocity.to_dict()
        tag_velocity: dict[str, float] = {}
        if item_tags:
            for item, v in self.item_velocity_.items():
                for tag in item_tags.get(item, []):
                    tag_velocity[tag] = tag_velocity.get(tag, 0.0) + v
        self.tag_velocity_ = tag_velocity
        return self

    def scores(self, item_ids: Iterable[str], item_tags: dict[str, list[str]] | None = None) -> dict[str, float]:
        item_ids = list(item_ids)
        own = np.array([self.item_velocity_.get(i, 0.0) for i in item_ids])
        tag = (np.array([np.mean([self.tag_velocity_.get(t, 0.0) for t in item_tags.get(i, [])] or [0.0]) for i in item_ids])
               if item_tags else np.zeros(len(item_ids)))

        def scale(x):
            return x / x.max() if len(x) and x.max() > 0 else x

        if not self.tag_velocity_:  # no tags known: the item's own velocity is the whole signal
            return dict(zip(item_ids, scale(own).tolist()))
        blended = (1 - self.tag_share) * scale(own) + self.tag_share * scale(tag)
        return dict(zip(item_ids, blended.tolist()))


def catalog_tags(catalog: pd.DataFrame) -> dict[str, list[str]]:
    """{item id: its tags} from a catalog's space-separated ``tags`` column (none: {}), as the trend's
    tag share reads them wherever trends are computed for serving (the export and the recommender)."""
    if "tags" not in catalog:
        return {}
    ids = catalog.index if "item_id" not in catalog else catalog["item_id"]
    return {str(i): str(t).split() for i, t in zip(ids, catalog["tags"]) if isinstance(t, str)}
