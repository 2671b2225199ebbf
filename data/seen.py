"""The seen-item policy: which items a user is not recommended again. One rule, used by evaluation,
the Python/CLI/HTTP recommender, the exported model's callers and the simulator.

- ``"consumed"`` (default): every item the user clicked or saved before now, however long ago, plus
  items shown (impressed) within the last ``impression_window_hours`` (a feed does not repeat a slate
  the user just scrolled past; 0 turns that off).
- ``"recent"``: for feeds that want re-engagement: only items clicked, saved or shown within the last
  ``window_hours``; older consumption may come back.

>>> policy = SeenPolicy()
>>> now = pd.Timestamp("2026-01-10", tz="UTC")
>>> sorted(policy.seen_ids(["a", "b", "c"], ["click", "impression", "impression"],
...                        pd.to_datetime(["2025-01-01T00:00", "2026-01-09T12:00", "2026-01-01T00:00"], utc=True), now))
['a', 'b']
"""
from __future__ import annotations

import dataclasses
from typing import Iterable

import numpy as np
import pandas as pd

from vistaste.data.contract import POSITIVE_EVENTS

SEEN_MODES = ("consumed", "recent")


@dataclasses.dataclass(frozen=True)
class SeenPolicy:
    mode: str = "consumed"
    window_hours: float = 24.0 * 7  # "recent" only: what was consumed or shown this recently is hidden
    impression_window_hours: float = 24.0  # "consumed" only: items shown this recently are hidden too (0: never)

    def __post_init__(self):
        if self.mode not in SEEN_MODES:
            raise ValueError(f"seen-item mode must be one of {', '.join(SEEN_MODES)}, got {self.mode!r}")
        if self.window_hours < 0 or self.impression_window_hours < 0:
            raise ValueError(f"windows must be >= 0 hours, got {self.window_hours} and {self.impression_window_hours}")

    def describe(self) -> str:
        if self.mode == "consumed":
            shown = f", and items shown in the last {self.impression_window_hours:g} h" if self.impression_window_hours else ""
            return f"every item the user clicked or saved before{shown}"
        return f"items the user clicked, saved or was shown in the last {self.window_hours:g} h (older ones may come back)"

    def hidden(self, events: np.ndarray, timestamps: pd.DatetimeIndex | np.ndarray, now: pd.Timestamp) -> np.ndarray:
        """Boolean mask over a user's (or many users') events before ``now``: True = that event's item is hidden."""
        events = np.asarray(events).astype(str)
        times = pd.DatetimeIndex(timestamps)
        before = times < now
        positive = np.isin(events, POSITIVE_EVENTS)
        if self.mode == "consumed":
            shown = ((events == "impression") & (times >= now - pd.Timedelta(hours=self.impression_window_hours))
                     if self.impression_window_hours else False)
            return before & (positive | shown)
        recent = times >= now - pd.Timedelta(hours=self.window_hours)
        return before & recent & (positive | (events == "impression"))

    def seen_ids(self, item_ids: Iterable[str], events, timestamps, now: pd.Timestamp) -> set[str]:
        """The hidden item ids of one user, from their events (any order)."""
        item_ids = np.asarray(list(item_ids), dtype=object)
        if len(item_ids) == 0:
            return set()
        return set(item_ids[self.hidden(events, timestamps, now)])

    def seen_by_user(self, logs: pd.DataFrame, now: pd.Timestamp | None = None, value: str = "item_id") -> dict[str, np.ndarray]:
        """``{user_id: unique hidden values}`` from a log with ``user_id, item_id, timestamp, event``
        (``value`` names the column to collect, e.g. an item-row column). ``now``: default, after the log's end."""
        if logs.empty:
            return {}
        now = now if now is not None else logs["timestamp"].max() + pd.Timedelta(microseconds=1)
        hidden = logs[self.hidden(logs["event"].to_numpy(), logs["timestamp"], now)]
        return {user: np.unique(group.to_numpy()) for user, group in hidden.groupby("user_id", sort=False)[value]}
