"""The serving path of the simulator's two-tower arms: :class:`ArmServer`, what `vistaste serve` would
answer if an arm's model were exported now (tests/test_sim_serving_path.py checks the slates are the
exported model's).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from vistaste.data.seen import SeenPolicy
from vistaste.data.trends import TrendSetting, recent_popularity
from vistaste.serving.index import build_index
from vistaste.serving.recommender import SlateServer, UnknownItems
from vistaste.serving.rerank_stages import Candidates
from vistaste.towers.config import CANDIDATES
from vistaste.towers.features import PAD, ItemTable, latest_histories, pad_history, positives
from vistaste.towers.trained import TrainedTwoTower

LIVE_EVENTS = 500  # events per user the service reads from its feedback store (Settings.max_history)


class ArmServer(SlateServer):
    """One simulated arm as `vistaste serve` would serve it if its model were exported now: the same
    :meth:`SlateServer.recommend` as :class:`~vistaste.serving.recommender.Recommender`, over what an export
    holds (the catalog available now, stored histories and consumption, last week's popularity, recent clicks
    for trends), and the same brute-force index class the export builds for a catalog this size.

    ``logs``: the arm's whole log (impressions, clicks, saves) before ``now``, playing the export's stored data
    plus the feedback store's live events (so impressions of the last day are hidden too, as the service
    hides them). Example::

        server = ArmServer(model, table, available_rows, logs, now, SeenPolicy(), tags, "v1")
        server.recommend("u000001", k=12, method="dpp", now=now)  # a Slate, as Recommender.recommend gives
    """

    def __init__(self, model: TrainedTwoTower, table: ItemTable, available: np.ndarray, logs: pd.DataFrame, now: pd.Timestamp,
                 policy: SeenPolicy, item_tags: dict[str, list[str]] | None = None, version: str = "simulated", max_k: int = CANDIDATES,
                 trend: TrendSetting | None = None):
        self.model, self.policy, self.version, self.max_k, self.now = model, policy, version, max_k, now
        self.trend = trend or TrendSetting()  # the simulator's models choose no boost: weight 0 unless an arm asks
        self.item_tags = item_tags or {}
        available = np.sort(np.asarray(available, dtype=np.int64))
        self.item_ids = table.ids[available].astype(str)
        self.row = {item: i for i, item in enumerate(self.item_ids)}
        self.image_vectors = table.vectors[available]
        self._table_rows = available  # local row -> the model's table row
        self.index = build_index(self.item_ids, model.item_vectors()[available], k=len(available))
        logs = logs[logs["timestamp"] < now]
        self._logs = logs
        pos = positives(logs.assign(user_id=logs["user_id"].astype(str), item_id=logs["item_id"].astype(str)))
        rows = np.fromiter((self.row.get(i, PAD) for i in pos["item_id"]), dtype=np.int64, count=len(pos))
        pos, rows = pos[rows != PAD], rows[rows != PAD]
        users = np.array(sorted(pos["user_id"].unique()), dtype=object)
        self.known_users = set(users.tolist())
        length = model.config.history_length
        self._history = dict(zip(users.tolist(), latest_histories(pos, rows, users, length)))
        self._hidden = {u: set(v.tolist()) for u, v in policy.seen_by_user(logs, now).items()}
        self.popularity = recent_popularity(rows, pos["timestamp"], len(available))
        self._clicks = pos[["item_id", "timestamp"]].reset_index(drop=True)
        self._trends: dict[tuple, dict[str, float]] = {}
        self._ranked: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}  # (user, history rows) -> (scores, local rows), all items

    # ------------------------------------------------------------------ what an export stores
    def stored_history(self, user_id: str) -> list[str]:
        rows = self._history.get(user_id)
        return [] if rows is None else [str(self.item_ids[r]) for r in rows if r != PAD]

    def check_items(self, item_ids) -> None:
        unknown = [i for i in item_ids if i not in self.row]
        if unknown:
            raise UnknownItems(unknown)

    def seen(self, user_id: str, live_events=(), now: pd.Timestamp | None = None) -> set[str]:
        now = self.now if now is None else now
        if now == self.now:
            hidden = set(self._hidden.get(user_id, ()))
        else:
            mine = self._logs[self._logs["user_id"] == user_id]
            hidden = self.policy.seen_ids(mine["item_id"].astype(str), mine["event"], mine["timestamp"], now)
        if live_events:
            items, events, times = zip(*live_events)
            hidden |= self.policy.seen_ids([str(i) for i in items], list(events), pd.DatetimeIndex(times), now)
        return hidden

    def history_vectors(self, history: list[str]) -> np.ndarray:
        return self.image_vectors[[self.row[i] for i in history if i in self.row]]

    def popular(self, n: int, seen=()) -> Candidates:
        order = [r for r in np.argsort(-self.popularity, kind="stable") if self.item_ids[r] not in seen][:n]
        return Candidates(self.item_ids[order], self.image_vectors[order], self.popularity[order] / max(self.popularity.max(), 1.0))

    def trend_scores(self, now: pd.Timestamp | None = None, live_clicks: pd.DataFrame | None = None,
                     setting: TrendSetting | None = None) -> dict[str, float]:
        setting = setting or self.trend
        now = self.now if now is None else now
        clicks = self._clicks if live_clicks is None or not len(live_clicks) else pd.concat(
            [self._clicks, live_clicks[["item_id", "timestamp"]]], ignore_index=True)
        key = (setting, now, len(clicks))
        if key not in self._trends:
            scores = setting.catalog_scores(clicks, now, self.item_ids, self.item_tags)
            self._trends[key] = dict(zip(self.item_ids.tolist(), scores.tolist()))
        return dict(self._trends[key])

    # ------------------------------------------------------------------ the model's candidates
    def _history_rows(self, history: list[str]) -> np.ndarray:
        """The last ``history_length`` known items of ``history`` as the model's table rows, PAD-left."""
        return pad_history([self._table_rows[self.row[i]] for i in history if i in self.row], self.model.config.history_length)

    def prepare(self, user_ids, histories: list[list[str]] | None = None) -> None:
        """Score many users at once (one tower call, one index query): :meth:`candidates` then reads these."""
        user_ids = [str(u) for u in user_ids]
        histories = [self.stored_history(u) for u in user_ids] if histories is None else histories
        rows = np.stack([self._history_rows(h) for h in histories]) if user_ids else np.zeros((0, 1), np.int64)
        todo = [a for a, u in enumerate(user_ids) if (u, rows[a].tobytes()) not in self._ranked]
        if not todo:
            return
        # The collaborative term (if the model has one) reads every item the user consumed, not the last few.
        consumed = [np.array([self._table_rows[self.row[i]] for i in histories[a] if i in self.row], dtype=np.int64) for a in todo]
        scores, ids = self.index(self.model.user_vectors(np.array(user_ids)[todo], rows[todo], consumed))
        scores, ids = scores.numpy(), ids.numpy()
        for j, a in enumerate(todo):
            local = np.fromiter((self.row[b.decode()] for b in ids[j]), dtype=np.int64, count=ids.shape[1])
            self._ranked[(user_ids[a], rows[a].tobytes())] = (scores[j].astype(np.float64), local)

    def candidates(self, user_id: str, history: list[str] | None = None, seen=(), n: int = CANDIDATES) -> tuple[Candidates, int]:
        history = self.stored_history(user_id) if history is None else list(history)
        rows = self._history_rows(history)
        key = (user_id, rows.tobytes())
        if key not in self._ranked:
            self.prepare([user_id], [history])
        scores, local = self._ranked[key]
        seen = set(seen)
        keep = np.fromiter((self.item_ids[r] not in seen for r in local), dtype=bool, count=len(local))
        scores, local = scores[keep][:n], local[keep][:n]
        return Candidates(self.item_ids[local], self.image_vectors[local], scores), int((rows != PAD).sum())

    def live_events(self, user_ids) -> dict[str, list[tuple[str, str, pd.Timestamp]]]:
        """Each user's latest ``LIVE_EVENTS`` events before now as (item_id, event, timestamp), oldest first:
        what the service reads from its feedback store for a request (``FeedbackStore.user_events``)."""
        wanted = set(map(str, user_ids))
        mine = self._logs[self._logs["user_id"].astype(str).isin(wanted)].sort_values("timestamp", kind="stable")
        out = {u: [] for u in wanted}
        for user, block in mine.groupby(mine["user_id"].astype(str), sort=False):
            block = block.tail(LIVE_EVENTS)
            out[user] = list(zip(block["item_id"].astype(str), block["event"], block["timestamp"]))
        return out

    def slates(self, user_ids, k: int, **options) -> np.ndarray:
        """[users, k] of the model's table rows (PAD where a slate is shorter): :meth:`recommend` for each user
        at this server's ``now``, given their latest events as the service gives them, with ``options``
        (method, trade_off, trend_weight, n_candidates, adaptive)."""
        user_ids = [str(u) for u in user_ids]
        self.prepare([u for u in user_ids if u in self.known_users])
        live = self.live_events(user_ids)
        out = np.full((len(user_ids), k), PAD)
        # The service's BLAS setting: one thread per process (a slate's algebra is tiny; more threads spin).
        with threadpool_limits(limits=1, user_api="blas"):
            for a, user in enumerate(user_ids):
                slate = self.recommend(user, k, live_events=live[user], now=self.now, **options)
                picked = [self._table_rows[self.row[i]] for i in slate.items["item_id"]]
                out[a, : len(picked)] = picked
        return out
