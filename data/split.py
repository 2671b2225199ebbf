"""Time-based splits: train on earlier days, validate and test on later days. Never random."""
from __future__ import annotations

import dataclasses

import pandas as pd


@dataclasses.dataclass(frozen=True)
class TimeSplit:
    """Boundaries: train < val_start <= validation < test_start <= test <= end."""

    train: pd.DataFrame
    validation: pd.DataFrame
    test: pd.DataFrame
    val_start: pd.Timestamp
    test_start: pd.Timestamp
    end: pd.Timestamp

    def describe(self) -> dict:
        return {
            "train_events": len(self.train), "validation_events": len(self.validation), "test_events": len(self.test),
            "val_start": str(self.val_start), "test_start": str(self.test_start), "end": str(self.end),
        }


def time_split(interactions: pd.DataFrame, test_days: float = 5, val_days: float = 3) -> TimeSplit:
    """Split a log by time: the last ``test_days`` are test, the ``val_days`` before them validation.

    >>> split = time_split(logs, test_days=5, val_days=3)  # doctest: +SKIP
    >>> split.train["timestamp"].max() < split.test["timestamp"].min()  # doctest: +SKIP
    True
    """
    if test_days <= 0 or val_days < 0:
        raise ValueError(f"test_days must be > 0 and val_days >= 0, got {test_days} and {val_days}")
    if interactions.empty:
        raise ValueError("cannot split an empty interaction log")
    times = interactions["timestamp"]
    end = times.max()
    test_start = end - pd.Timedelta(days=test_days)
    val_start = test_start - pd.Timedelta(days=val_days)
    if val_start <= times.min():
        span = (end - times.min()).total_seconds() / 86_400
        raise ValueError(f"log spans {span:.1f} days: too short for {val_days} validation + {test_days} test days")
    train = interactions[times < val_start]
    validation = interactions[(times >= val_start) & (times < test_start)]
    test = interactions[times >= test_start]
    return TimeSplit(train.reset_index(drop=True), validation.reset_index(drop=True), test.reset_index(drop=True), val_start, test_start, end)
