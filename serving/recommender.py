"""Load an exported version and answer ``recommend(user) -> item ids, scores`` with re-ranking.

:meth:`SlateServer.recommend` is the one code path behind the CLI, the HTTP service and the online simulator:
:class:`Recommender` serves it from an exported version on disk, the simulator's arms
(``vistaste.bench.simulate.ArmServer``) from a model in memory; both supply the same few things (stored
history and consumption, unseen candidates, popular items, trends) and share every rule after that.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import tensorflow as tf

from vistaste.data.io import resolve_inside
from vistaste.data.seen import SeenPolicy
from vistaste.data.trends import TrendSetting, catalog_tags
from vistaste.serving.adaptive import UserBehaviour, early_exit, taste_count
from vistaste.serving.index import DirectIndex, IndexParams  # (importing it registers the ScaNN ops before loading)
from vistaste.serving.rerank import DEFAULT_METHOD, Method, check_method, default_pipeline
from vistaste.serving.rerank_stages import Candidates
from vistaste.serving.versions import TREND_CLICKS, current_version_dir
from vistaste.towers.config import CANDIDATES


class SlateTooLarge(ValueError):
    """More items asked for than the exported index returns per query."""


class UnknownItems(ValueError):
    def __init__(self, items: list[str]):
        self.items = items
        super().__init__(f"unknown item id(s): {items[:10]}")


@dataclasses.dataclass
class Slate:
    items: pd.DataFrame  # item_id, score, relevance, trend, diversity_gain, reason
    user_id: str
    fallback: str | None  # None, or why the slate is not personalised ("popular")
    version: str
    history_length: int


class SlateServer:
    """The serving path, given a model and what it knows of users: seen-item policy -> unseen candidates
    (popular items for a user without history) -> trend boost -> re-rank (:func:`build_slate`).

    A subclass supplies ``policy`` (:class:`SeenPolicy`), ``version``, ``known_users`` (ids with stored
    history), ``trend`` (the :class:`TrendSetting` chosen in training), ``max_k`` (the largest slate) and
    the methods below that raise ``NotImplementedError``; :meth:`recommend` is the same for all of them.
    """

    policy: SeenPolicy
    version: str
    known_users: set
    trend: TrendSetting
    max_k: int

    def stored_history(self, user_id: str) -> list[str]:
        """The user's stored clicks (item ids, oldest first); empty for unknown users."""
        raise NotImplementedError

    def check_items(self, item_ids) -> None:
        """Raise :class:`UnknownItems` for ids not in the catalog."""
        raise NotImplementedError

    def seen(self, user_id: str, live_events=(), now: pd.Timestamp | None = None) -> set[str]:
        """Item ids the seen-item policy hides for this user at ``now`` (default: the wall clock)."""
        raise NotImplementedError

    def candidates(self, user_id: str, history: list[str] | None = None, seen=(), n: int = CANDIDATES) -> tuple[Candidates, int]:
        """The ``n`` best items by the model that are not in ``seen`` (ids, image vectors, the model's scores) for
        the stored history (None) or an explicit one, and the history length the model read."""
        raise NotImplementedError

    def popular(self, n: int, seen=()) -> Candidates:
        """The ``n`` most popular items not in ``seen``, in popularity order."""
        raise NotImplementedError

    def trend_scores(self, now: pd.Timestamp | None = None, live_clicks: pd.DataFrame | None = None,
                     setting: TrendSetting | None = None) -> dict[str, float]:
        """{item id: trend in [0, 1]} over the catalog at ``now``."""
        raise NotImplementedError

    def history_vectors(self, history: list[str]) -> np.ndarray:
        """[len(history), d]: the image vectors of the history's items (the space the re-ranker diversifies in)."""
        raise NotImplementedError

    def recommend(self, user_id: str, k: int = 20, history: list[str] | None = None, seen=(), trend_scores=None,
                  method: Method = DEFAULT_METHOD, trade_off: float | None = None, trend_weight: float | None = None,
                  n_candidates: int = CANDIDATES, live_events=(), now: pd.Timestamp | None = None, adaptive: dict | None = None,
                  trend_slots: int | None = None) -> Slate:
        """The final slate of ``k``: unseen ANN candidates -> trend boost -> diversify.

        Hidden (the seen-item policy at ``now``, default the wall clock): the user's stored consumption,
        ``live_events`` since the export ((item_id, event, timestamp)), an explicit ``history``, and any extra
        ``seen`` ids. A user without stored history and without a given history gets popular items (flagged,
        in popularity order). ``trend_weight``: None, the weight chosen on validation in training (the model
        card's); 0, none. ``trend_slots``: the boosted places of a mixed slate (None, the model card's; 0,
        every place). ``trend_scores``: {item_id: [0, 1]} or a function of the candidate ids returning
        one; None, the stored recent clicks' trends at ``now`` (:meth:`trend_scores`).
        ``method``: one of :data:`~vistaste.serving.rerank.METHODS` (ValueError otherwise);
        ``method="adaptive"`` sets the diversity per user from :meth:`behaviour` (``adaptive``: its settings,
        see :class:`~vistaste.serving.rerank.AdaptiveDPP`; None, the defaults).
        """
        check_method(method)  # here, not only in the re-ranker: the popular fallback never reaches it
        if k > self.max_k:
            raise SlateTooLarge(f"k must be <= {self.max_k} (candidates per query in the exported index; re-export with a larger --k), "
                                f"got {k}")
        if history is not None:
            self.check_items(history)
        hidden = self.seen(user_id, live_events, now) | set(seen) | set(history or ())
        if history is None and user_id not in self.known_users:
            candidates = self.popular(n_candidates, hidden)
            # Popular items in popularity order: diversity and trends re-rank personalised slates only.
            return build_slate(candidates, user_id, k, hidden, None, "none", None, 0.0, "popular", self.version, 0)
        candidates, history_length = self.candidates(user_id, history, hidden, max(n_candidates, k))
        trend_weight = self.trend.weight if trend_weight is None else trend_weight
        trend_slots = self.trend.slots if trend_slots is None else trend_slots
        if trend_scores is None and trend_weight > 0:
            trend_scores = self.trend_scores(now)
        behaviour = self.behaviour(user_id, k, history, live_events, now) if method == "adaptive" else None
        return build_slate(candidates, user_id, k, hidden, trend_scores, method, trade_off, trend_weight, None, self.version,
                           history_length, behaviour, adaptive, trend_slots)

    def behaviour(self, user_id: str, k: int, history: list[str] | None = None, live_events=(),
                  now: pd.Timestamp | None = None) -> UserBehaviour:
        """What the adaptive re-ranker reads of a user: how early they leave ``k``-item slates (their
        impressions among ``live_events`` before ``now``: exports store clicks only, the feedback store keeps
        impressions) and how many tastes their history (given, else stored) spans in image space."""
        now = now or pd.Timestamp.now(tz="UTC")
        shown = [pd.Timestamp(t) for _, event, t in live_events if event == "impression" and pd.Timestamp(t) < now]
        clicked = self.stored_history(user_id) if history is None else list(history)
        return UserBehaviour(early_exit(shown, k), taste_count(self.history_vectors(clicked)) if clicked else None)


class Recommender(SlateServer):
    """An exported version: SavedModel signatures + item vectors for the re-ranker + catalog metadata.

    ``direct_index`` (default): candidates come from the ``user_embedding`` signature and the SavedModel's own
    ScaNN index searched directly (:class:`~vistaste.serving.index.DirectIndex`, :meth:`index_candidates`): the
    ``candidates`` signature's answer without TensorFlow's cost around the index; the signature still answers
    whenever it would not rank from the index (it then scores exactly). Not for a sharded export. Costs a
    second copy of the index's vectors and codes in memory (~300 MB at 1M items); False: every query through
    the signature."""

    def __init__(self, version_dir: str | Path, policy: SeenPolicy | None = None, direct_index: bool = True):
        self.policy = policy or SeenPolicy()
        self.version_dir = current_version_dir(version_dir)
        self.version = self.version_dir.name
        self.model = tf.saved_model.load(str(self.version_dir / "saved_model"))
        self._by_user = self.model.signatures["recommend"]
        self._by_history = self.model.signatures["recommend_history"]
        self._candidates = self.model.signatures["candidates"]
        self._embed = self.model.signatures["user_embedding"]
        items = np.load(self.version_dir / "items.npz")
        self.item_ids = items["ids"].astype(str)
        self.item_vectors = items["vectors"]
        self.image_vectors = items["image_vectors"]  # the re-ranker diversifies over these
        self.popularity = items["popularity"]
        self.row = {str(item): i for i, item in enumerate(self.item_ids)}
        users = np.load(self.version_dir / "users.npz")
        self._history_row = {str(u): i for i, u in enumerate(users["ids"])}
        self._histories = users["histories"]
        # Stored consumption per user (item rows and last times), for the seen-item policy.
        order = np.argsort(users["consumed_user"], kind="stable")
        self._consumed_rows = users["consumed_row"][order]
        self._consumed_times = pd.to_datetime(users["consumed_time"][order], unit="s", utc=True)
        self._consumed_start = np.searchsorted(users["consumed_user"][order], np.arange(len(users["ids"]) + 1))
        self.known_users = set(self._history_row)
        self.catalog = pd.read_parquet(self.version_dir / "catalog.parquet").set_index("item_id")
        self.item_tags = catalog_tags(self.catalog)
        self.image_paths = self.catalog["image_path"].to_dict() if "image_path" in self.catalog else {}
        self.card = json.loads((self.version_dir / "model_card.json").read_text())
        # The trend boost chosen on validation when the model was trained, and the clicks it starts from.
        self.trend = TrendSetting.from_dict(self.card.get("training", {}).get("history", {}).get("trend"))
        clicks_file = self.version_dir / TREND_CLICKS
        self.trend_clicks = (pd.read_parquet(clicks_file) if clicks_file.exists()
                             else pd.DataFrame({"item_id": pd.Series(dtype=str), "timestamp": pd.Series(dtype="datetime64[ns, UTC]")}))
        self._export_trends: dict[TrendSetting, dict[str, float]] = {}  # see trend_scores
        self.history_length = self.card["training"]["config"]["history_length"]
        self.direct_index = self._direct_index() if direct_index else None

    def _direct_index(self) -> DirectIndex | None:
        """The exported ScaNN index searched directly, where the export has one index over the item rows in order."""
        card = self.card["index"]
        index = getattr(self.model, "index", None)
        if card.get("shards", 1) != 1 or getattr(index, "_serialized_searcher", None) is None:
            return None
        if not np.array_equal(index._identifiers.numpy().astype(str), self.item_ids):
            return None
        params = IndexParams(**{field.name: card[field.name] for field in dataclasses.fields(IndexParams)})
        return DirectIndex.from_index(index, card["index_k"], params)

    @property
    def max_k(self) -> int:
        """The largest slate: candidates per query in the exported index."""
        return self.card["index"]["k"]

    def history_vectors(self, history: list[str]) -> np.ndarray:
        return self.image_vectors[[self.row[i] for i in history if i in self.row]]

    def image_file(self, item_id: str) -> Path | None:
        """The item's image on this machine: its dataset-relative path resolved inside the dataset directory
        the export came from (never outside it), or None when there is none."""
        dataset_dir = (self.card.get("data") or {}).get("dataset_dir")
        path = self.image_paths.get(item_id)
        if not dataset_dir or not isinstance(path, str):
            return None
        try:
            return resolve_inside(dataset_dir, path)
        except ValueError:
            return None

    def stored_history(self, user_id: str) -> list[str]:
        """The user's clicks known at export time (item ids, oldest first); empty for unknown users."""
        row = self._history_row.get(user_id)
        if row is None:
            return []
        return [str(self.item_ids[r]) for r in self._histories[row] if r >= 0]

    def check_items(self, item_ids) -> None:
        unknown = [i for i in item_ids if i not in self.row]
        if unknown:
            raise UnknownItems(unknown)

    def seen(self, user_id: str, live_events=(), now: pd.Timestamp | None = None) -> set[str]:
        """Item ids the seen-item policy hides for this user: stored consumption at export plus ``live_events``
        ((item_id, event, timestamp) rows since, e.g. from the feedback store)."""
        now = now or pd.Timestamp.now(tz="UTC")
        items, events, times = [], [], []
        row = self._history_row.get(user_id)
        if row is not None:
            part = slice(self._consumed_start[row], self._consumed_start[row + 1])
            items = [str(self.item_ids[r]) for r in self._consumed_rows[part]]
            events = ["click"] * len(items)
            times = list(self._consumed_times[part])
        for item, event, timestamp in live_events:
            items.append(str(item))
            events.append(event)
            times.append(pd.Timestamp(timestamp))
        return self.policy.seen_ids(items, events, pd.DatetimeIndex(times, tz="UTC") if times else pd.DatetimeIndex([], tz="UTC"), now)

    def candidates(self, user_id: str, history: list[str] | None = None, seen=(), n: int = CANDIDATES) -> tuple[Candidates, int]:
        """The ``n`` best ANN candidates (ids, the model's scores) that are not in ``seen``, by stored history
        or an explicit one (the exported ``candidates`` signature; the trend boost is applied after, with live trends)."""
        history = self.stored_history(user_id) if history is None else list(history)
        if self.direct_index is not None:
            embedded = self._embed(user_id=tf.constant([user_id]), history=tf.constant([history or [""]]))
            found = self.index_candidates(embedded["embedding"].numpy()[0], seen, n)
            if found is not None:
                if "history_length" in embedded:
                    return found, int(embedded["history_length"].numpy()[0])
                # a model exported before user_embedding gave it: the tower reads the last history_length known items
                return found, min(self.history_length, sum(item in self.row for item in history))
        out = self._candidates(user_id=tf.constant([user_id]), history=tf.constant([history or [""]]),
                           exclude=tf.constant([sorted(seen) or [""]]), k=tf.constant(min(n, len(self.item_ids)), tf.int32))
        ids = np.array([b.decode() for b in out["item_ids"].numpy()[0]])
        keep = ids != ""
        ids, scores = ids[keep], out["relevance"].numpy()[0][keep].astype(np.float64)
        rows = np.array([self.row[i] for i in ids], dtype=np.int64)
        return Candidates(ids, self.image_vectors[rows], scores), int(out["history_length"].numpy()[0])

    def index_candidates(self, query: np.ndarray, seen=(), n: int = CANDIDATES) -> Candidates | None:
        """The ``n`` best items not in ``seen`` by the index searched directly for one query vector ``[d]`` (the
        user tower's): what the ``candidates`` signature answers from its index (its scores, ties in index order).
        None without a direct index, or where the signature would not rank from the index (fewer unseen items in
        it than asked for and left in the catalog: it then scores exactly) or ScaNN padded its answer (NaN scores)."""
        if self.direct_index is None:
            return None
        n = min(n, len(self.item_ids))
        rows, scores = self.direct_index.search(query)
        if np.isnan(scores).any():
            return None
        seen_rows = {self.row[i] for i in seen if i in self.row}
        if seen_rows:
            unseen = np.flatnonzero([row not in seen_rows for row in rows.tolist()])
            rows, scores = rows[unseen], scores[unseen]
        if len(rows) < min(n, len(self.item_ids) - len(seen_rows)):
            return None
        best = np.argsort(-scores, kind="stable")[:n]
        top = rows[best]
        return Candidates(self.item_ids[top], self.image_vectors[top], scores[best].astype(np.float64))

    def trend_scores(self, now: pd.Timestamp | None = None, live_clicks: pd.DataFrame | None = None,
                     setting: TrendSetting | None = None) -> dict[str, float]:
        """{item id: trend in [0, 1]} over the whole catalog at ``now``: the exported recent clicks plus
        ``live_clicks`` (item_id, timestamp, e.g. from the feedback store), by the model's trend setting."""
        setting = setting or self.trend
        now = now or pd.Timestamp.now(tz="UTC")
        if live_clicks is None or not len(live_clicks):
            # Trends are measured at the latest click known, so from the exported clicks alone they are the
            # same for every ``now`` after the last of them: computed once per setting, not per slate.
            latest = self.trend_clicks["timestamp"].max() if len(self.trend_clicks) else None
            if latest is None or now >= latest:
                if setting not in self._export_trends:
                    self._export_trends[setting] = self._catalog_trends(self.trend_clicks, now, setting)
                return dict(self._export_trends[setting])
            return self._catalog_trends(self.trend_clicks, now, setting)
        clicks = pd.concat([self.trend_clicks, live_clicks[["item_id", "timestamp"]]], ignore_index=True)
        return self._catalog_trends(clicks, now, setting)

    def _catalog_trends(self, clicks: pd.DataFrame, now: pd.Timestamp, setting: TrendSetting) -> dict[str, float]:
        return dict(zip(self.item_ids.tolist(), setting.catalog_scores(clicks, now, self.item_ids, self.item_tags).tolist()))

    def popular(self, n: int, seen=()) -> Candidates:
        order = [r for r in np.argsort(-self.popularity, kind="stable") if self.item_ids[r] not in seen][:n]
        return Candidates(self.item_ids[order], self.image_vectors[order], self.popularity[order] / max(self.popularity.max(), 1.0))

def build_slate(candidates: Candidates, user_id: str, k: int, seen=(), trend_scores=None, method: Method = DEFAULT_METHOD,
                trade_off: float | None = None, trend_weight: float = 0.0, fallback: str | None = None, version: str = "",
                history_length: int = 0, behaviour: UserBehaviour | None = None, adaptive: dict | None = None,
                trend_slots: int = 0) -> Slate:
    """ANN candidates -> the final slate (the default re-ranking pipeline) with a reason per item.

    The one re-ranking path shared by the CLI, the HTTP service and the online simulator (through
    :meth:`SlateServer.recommend`). ``behaviour`` and ``adaptive``: for ``method="adaptive"``; ``trend_slots``:
    the boosted places of a mixed slate (0, every place).
    """
    if callable(trend_scores):
        trend_scores = trend_scores(candidates.ids)
    slate = default_pipeline(k, seen, trend_scores, method, trade_off, trend_weight, behaviour, adaptive, trend_slots)(candidates)
    position = {item: i for i, item in enumerate(candidates.ids)}
    relevance = candidates.relevance[[position[i] for i in slate.ids]] if len(slate) else np.zeros(0)
    # Where each item would stand by score alone: picked ahead of that means diversity promoted it.
    relevance_rank = np.empty(len(slate), dtype=np.int64)
    relevance_rank[np.argsort(-slate.relevance, kind="stable")] = np.arange(len(slate))
    reasons = [_reason(float(t), fallback, int(rank), pos) for pos, (t, rank) in enumerate(zip(slate.trend, relevance_rank))]
    frame = pd.DataFrame({"item_id": slate.ids, "score": slate.relevance, "relevance": relevance, "trend": slate.trend,
                          "diversity_gain": slate.diversity_gain, "reason": reasons})
    return Slate(frame, user_id, fallback, version, history_length)


TRENDING = 0.3  # a slate item whose trend score (in [0, 1]) passes this is explained as "trending"


def _reason(trend: float, fallback: str | None, relevance_rank: int, position: int) -> str:
    if fallback:
        return fallback
    parts = ["relevance"]
    if trend > TRENDING:
        parts.append("trending")
    if relevance_rank > position:
        parts.append("diversity")
    return " + ".join(parts)
