"""Held-out splits of an interaction log: by time (the default) or each user's last N. Never random.

One rule decides the test period (:class:`SplitSpec`, exactly one of):

- ``test_fraction=F`` (default 0.2): the global temporal split: the last F of positive events (clicks,
  saves) are test; the cut is the timestamp where that last share starts, and every event (impressions
  too) at or after it is test.
- ``test_days=D``: the last D days of the log.
- ``test_start=T``: every event at or after timestamp T.
- ``leave_last=N``: per user, the last N positives (and anything the user did from then on) are test;
  users with at most N positives stay wholly in training. Not a temporal split across users: other
  users' later events are in training (say so wherever its numbers are reported).

Validation (for early stopping and for choosing any method's settings) is carved out of what precedes
the test period by the same kind of rule: the last ``val_fraction`` of positives before the cut (or, with
``leave_last``, each user's N positives before their test ones). A validation slice with fewer than
``min_val_users`` users who have both history and something new to find is an error, not noise.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from vistaste.data.contract import POSITIVE_EVENTS

DEFAULT_TEST_FRACTION = 0.2
DEFAULT_VAL_FRACTION = 0.1
DEFAULT_MIN_VAL_USERS = 20


class SplitTooSmall(ValueError):
    """A split left too little data for what it is needed for (names the rule to change)."""


@dataclasses.dataclass
class SplitRule:
    """The fields of a split rule, declared once: :class:`SplitSpec` checks and describes them, and every
    config that carries a split (``TrainConfig``, ``FinetuneConfig``) inherits them and hands them over
    with :meth:`split_spec`. None everywhere means the default rule (``test_fraction`` 0.2)."""

    test_fraction: float | None = None
    test_days: float | None = None
    test_start: str | None = None
    leave_last: int | None = None
    val_fraction: float = DEFAULT_VAL_FRACTION
    min_val_users: int = DEFAULT_MIN_VAL_USERS

    def split_spec(self) -> "SplitSpec":
        """These fields as a checked :class:`SplitSpec` (``ValueError`` naming the field when one is wrong)."""
        return SplitSpec(**{f.name: getattr(self, f.name) for f in dataclasses.fields(SplitRule)})


@dataclasses.dataclass
class SplitSpec(SplitRule):
    """Which events are held out for testing and validation: a checked :class:`SplitRule`. See the module
    docstring for the rules.

    >>> SplitSpec(test_fraction=0.2).protocol()
    'global temporal split: the last 20% of positive events are test; validation: the last 10% of positives before the test cut'
    """

    def __post_init__(self):
        chosen = [n for n in ("test_fraction", "test_days", "test_start", "leave_last") if getattr(self, n) is not None]
        if len(chosen) > 1:
            raise ValueError(f"give one test rule, got {', '.join(chosen)}")
        if not chosen:
            self.test_fraction = DEFAULT_TEST_FRACTION
        if self.test_fraction is not None and not 0 < self.test_fraction < 1:
            raise ValueError(f"test_fraction must be in (0, 1), got {self.test_fraction}")
        if self.test_days is not None and self.test_days <= 0:
            raise ValueError(f"test_days must be > 0, got {self.test_days}")
        if self.leave_last is not None and self.leave_last < 1:
            raise ValueError(f"leave_last must be >= 1, got {self.leave_last}")
        if self.test_start is not None:
            try:
                self.test_start = str(pd.Timestamp(self.test_start))
            except ValueError:
                raise ValueError(f"test_start must be a timestamp such as 2026-01-31 or 2026-01-31T12:00:00Z, "
                                 f"got {self.test_start!r}") from None
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"val_fraction must be in (0, 1) (validation is what picks the epoch), got {self.val_fraction}")
        if self.min_val_users < 1:
            raise ValueError(f"min_val_users must be >= 1, got {self.min_val_users}")

    def protocol(self) -> str:
        if self.leave_last is not None:
            test = (f"leave-last-{self.leave_last}: each user's last {self.leave_last} positives are test (other users' later events stay "
                    f"in training); validation: each user's {self.leave_last} positives before those")
            return test
        if self.test_fraction is not None:
            test = f"global temporal split: the last {self.test_fraction:.0%} of positive events are test"
        elif self.test_days is not None:
            test = f"global temporal split: the last {self.test_days:g} days are test"
        else:
            test = f"global temporal split: events from {self.test_start} on are test"
        return f"{test}; validation: the last {self.val_fraction:.0%} of positives before the test cut"


@dataclasses.dataclass(frozen=True)
class TimeSplit:
    """``train`` < ``validation`` < ``test`` (globally, or per user with leave-last-N).

    ``val_start``/``test_start`` are the global cuts (with leave-last-N: the earliest held-out event).
    """

    train: pd.DataFrame
    validation: pd.DataFrame
    test: pd.DataFrame
    val_start: pd.Timestamp
    test_start: pd.Timestamp
    end: pd.Timestamp
    spec: SplitSpec = dataclasses.field(default_factory=SplitSpec)

    @property
    def per_user(self) -> bool:
        return self.spec.leave_last is not None

    def describe(self) -> dict:
        return {
            "protocol": self.spec.protocol(), "rule": {k: v for k, v in dataclasses.asdict(self.spec).items() if v is not None},
            "train_events": len(self.train), "validation_events": len(self.validation), "test_events": len(self.test),
            "val_start": str(self.val_start), "test_start": str(self.test_start), "end": str(self.end),
        }


def _positive(frame: pd.DataFrame) -> np.ndarray:
    return frame["event"].isin(POSITIVE_EVENTS).to_numpy()


def _fraction_cut(frame: pd.DataFrame, fraction: float, what: str) -> pd.Timestamp:
    """The timestamp from which the last ``fraction`` of positive events start."""
    times = np.sort(frame.loc[_positive(frame), "timestamp"].to_numpy())
    if len(times) < 2:
        raise SplitTooSmall(f"{what}: {len(times)} positive events; need at least 2 to hold out a share")
    index = min(max(int(np.floor(len(times) * (1 - fraction))), 1), len(times) - 1)
    return pd.Timestamp(times[index])


def _last_n(frame: pd.DataFrame, n: int) -> np.ndarray:
    """Boolean mask: each user's events from their n-th last positive on (users with <= n positives: none)."""
    pos = frame[_positive(frame)]
    rank = pos.groupby("user_id", sort=False).cumcount(ascending=False)  # 0 = the user's last positive
    counts = pos.groupby("user_id", sort=False)["user_id"].transform("size")
    starts = pos[(rank == n - 1) & (counts > n)].set_index("user_id")["timestamp"]
    if starts.empty:
        return np.zeros(len(frame), bool)
    start = frame["user_id"].map(starts)
    return (start.notna() & (frame["timestamp"] >= start)).to_numpy()


def split_log(interactions: pd.DataFrame, spec: SplitSpec | None = None) -> TimeSplit:
    """Split a time-sorted (or not) log by ``spec``; every row lands in exactly one part.

    >>> split = split_log(logs, SplitSpec(test_fraction=0.2))  # doctest: +SKIP
    >>> split.train["timestamp"].max() < split.test["timestamp"].min()  # doctest: +SKIP
    True
    """
    spec = spec or SplitSpec()
    if interactions.empty:
        raise ValueError("cannot split an empty interaction log")
    logs = interactions.sort_values("timestamp", kind="stable").reset_index(drop=True)
    times = logs["timestamp"]
    end = times.max()
    if spec.leave_last is not None:
        test_mask = _last_n(logs, spec.leave_last)
        if not test_mask.any():
            raise SplitTooSmall(f"leave-last-{spec.leave_last}: no user has more than {spec.leave_last} positives")
        rest = logs[~test_mask]
        val_mask = _last_n(rest, spec.leave_last)
        test, validation, train = logs[test_mask], rest[val_mask], rest[~val_mask]
        test_start = test["timestamp"].min()
        val_start = validation["timestamp"].min() if len(validation) else test_start
    else:
        if spec.test_fraction is not None:
            test_start = _fraction_cut(logs, spec.test_fraction, "test split")
        elif spec.test_days is not None:
            test_start = end - pd.Timedelta(days=spec.test_days)
        else:
            test_start = pd.Timestamp(spec.test_start)
            if test_start.tzinfo is None:
                test_start = test_start.tz_localize("UTC")
        before = logs[times < test_start]
        if before.empty or not _positive(before).any():
            span = (end - times.min()).total_seconds() / 86_400
            raise SplitTooSmall(f"{spec.protocol()}: nothing left before the test period (the log spans {span:.1f} days from "
                                f"{times.min()} to {end})")
        if (times >= test_start).sum() == 0:
            raise SplitTooSmall(f"{spec.protocol()}: the test period starting {test_start} is empty (the log ends {end})")
        val_start = _fraction_cut(before, spec.val_fraction, "validation split")
        train = before[before["timestamp"] < val_start]
        validation = before[before["timestamp"] >= val_start]
        test = logs[times >= test_start]
    if not _positive(train).any():
        raise SplitTooSmall(f"{spec.protocol()}: no positive events left for training")
    return TimeSplit(train.reset_index(drop=True), validation.reset_index(drop=True), test.reset_index(drop=True), val_start, test_start,
                     end, spec)
