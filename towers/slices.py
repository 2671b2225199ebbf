"""Who is scored, with what history, against which items: the evaluation protocol's one implementation,
shared by validation during training (early stopping), choosing any method's settings, and `evaluate`.

For each user active in the held-out period, at the user's cut (the global test start, or with
leave-last-N the user's first held-out event):

- ``history_rows``: the user's last ``history_length`` positives before the cut (the user tower's input);
- ``histories``: every positive before the cut, oldest first (what baselines such as ALS and item-kNN read);
- ``exclude``: the item rows the seen-item policy hides at the cut (default: everything consumed before);
- ``relevant``: the user's held-out positives minus the excluded items (nothing consumed is "found" again).

Slices: *warm users* (some history before the cut), *new users* (none: their first
``NEW_USER_HISTORY`` held-out clicks are given as history and the rest is scored; the history path of
the user tower is what serves them), *cold items* (warm users' relevant items created in the held-out
period, where the image is all there is). A user is evaluable when the slice leaves something relevant.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from vistaste.data.seen import SeenPolicy
from vistaste.data.split import TimeSplit
from vistaste.towers.features import PAD, ItemTable, latest_histories, positives

NEW_USER_HISTORY = 2


@dataclasses.dataclass
class Slice:
    """Users to score at their cut; every list is aligned with ``user_ids``."""

    name: str
    user_ids: np.ndarray
    history_rows: np.ndarray  # [U, history_length], PAD-left
    histories: list[np.ndarray]
    exclude: list[np.ndarray]
    relevant: list[np.ndarray]
    cuts: pd.DatetimeIndex | None = None  # each user's cut (UTC): "now" for their seen items and trends

    def __len__(self) -> int:
        return len(self.user_ids)

    def take(self, keep, name: str | None = None, relevant: list[np.ndarray] | None = None) -> "Slice":
        keep = list(keep)
        rel = relevant if relevant is not None else [self.relevant[i] for i in keep]
        return Slice(name or self.name, self.user_ids[keep], self.history_rows[keep], [self.histories[i] for i in keep],
                     [self.exclude[i] for i in keep], rel, None if self.cuts is None else self.cuts[keep])


def with_rows(frame: pd.DataFrame, table: ItemTable) -> pd.DataFrame:
    """``frame`` with each event's item ``row``; events on items without a vector are dropped."""
    rows = table.rows(frame["item_id"].to_numpy(), unknown="pad")
    return frame.assign(row=rows)[rows != PAD]


def positive_rows(frame: pd.DataFrame, table: ItemTable) -> pd.DataFrame:
    """The positives of ``frame`` (see :func:`positives`) with their item ``row``, re-indexed."""
    return with_rows(positives(frame), table).reset_index(drop=True)


def _cuts(split: TimeSplit, users) -> pd.Series:
    """Each held-out user's cut: the global test start, or (leave-last-N) their first held-out event."""
    if split.per_user:
        return split.test.groupby("user_id")["timestamp"].min().reindex(list(users))
    return pd.Series(split.test_start, index=list(users))


def build_slices(split: TimeSplit, table: ItemTable, history_length: int, policy: SeenPolicy | None = None,
                 new_user_history: int = NEW_USER_HISTORY) -> list[Slice]:
    """Warm users, new users and (when the catalog has ``created_at``) cold items; empty slices dropped."""
    policy = policy or SeenPolicy()
    before_logs = pd.concat([split.train, split.validation], ignore_index=True)
    before = positive_rows(before_logs, table)
    test = positive_rows(split.test, table)
    by_user = test.groupby("user_id", sort=True)["row"].apply(lambda s: s.to_numpy())
    known = set(before["user_id"])
    test_users = by_user.index.to_numpy(dtype=object)

    cuts = _cuts(split, test_users)
    logged = with_rows(before_logs[before_logs["user_id"].isin(set(test_users))], table)
    now = pd.DatetimeIndex(logged["user_id"].map(cuts))
    hidden_rows = logged[policy.hidden(logged["event"].to_numpy(), logged["timestamp"], now)]
    hidden = {u: np.unique(g.to_numpy()) for u, g in hidden_rows.groupby("user_id", sort=False)["row"]}
    full = {u: g.to_numpy() for u, g in before.groupby("user_id", sort=False)["row"]}
    empty = np.zeros(0, np.int64)

    warm_users = np.array([u for u in test_users if u in known], dtype=object)
    warm_hist = latest_histories(before, before["row"].to_numpy(), warm_users, history_length)
    warm_exclude = [hidden.get(u, empty) for u in warm_users]
    warm_rel = [np.setdiff1d(by_user[u], ex) for u, ex in zip(warm_users, warm_exclude)]
    warm = Slice("warm users", warm_users, warm_hist, [full[u] for u in warm_users], warm_exclude, warm_rel,
                 pd.DatetimeIndex(cuts.reindex(warm_users)))
    warm = warm.take([i for i, rel in enumerate(warm_rel) if len(rel)])
    slices = [warm]

    new_ids, new_hist, new_full, new_rel, new_cuts = [], [], [], [], []
    for user in test_users:
        if user in known:
            continue
        rows = pd.unique(by_user[user])  # time order, first occurrence
        seen = rows[:new_user_history]
        rel = np.setdiff1d(rows[new_user_history:], seen)
        if len(seen) and len(rel):
            new_ids.append(user)
            new_hist.append(np.r_[np.full(history_length, PAD), seen][-history_length:])
            new_full.append(seen)
            new_rel.append(rel)
            new_cuts.append(cuts[user])
    slices.append(Slice("new users", np.array(new_ids, dtype=object), np.array(new_hist, dtype=np.int64).reshape(-1, history_length),
                        new_full, [np.unique(h) for h in new_full], new_rel, pd.DatetimeIndex(new_cuts, tz="UTC")))

    if table.created_at is not None and len(warm):
        created = pd.to_datetime(pd.Series(table.created_at), utc=True)
        cold = np.flatnonzero((created >= split.test_start).to_numpy())
        cold_rel = [np.intersect1d(rel, cold) for rel in warm.relevant]
        keep = [i for i, rel in enumerate(cold_rel) if len(rel)]
        slices.append(warm.take(keep, "cold items", [cold_rel[i] for i in keep]))
    return [s for s in slices if len(s)]


def validation_split(split: TimeSplit) -> TimeSplit:
    """The training period seen as its own split: train -> validation takes the place of test."""
    return dataclasses.replace(split, train=split.train, validation=split.train.iloc[:0], test=split.validation,
                               test_start=split.val_start, end=split.test_start)


def available_items(table: ItemTable, until: pd.Timestamp) -> np.ndarray:
    """Items that exist by ``until`` (no ``created_at``: all)."""
    if table.created_at is None:
        return np.ones(len(table), bool)
    created = pd.to_datetime(pd.Series(table.created_at), utc=True)
    return (created.isna() | (created <= until)).to_numpy()
