"""`vistaste simulate`: a closed-loop online A/B test on the built-in world.

Offline metrics on logged clicks reward what the old system already showed. Here the world's users,
whose hidden tastes we know, react to what each arm serves: for each simulated day, every arm serves
slates to the day's active users (two-tower arms through the serving path itself: :class:`ArmServer`, the
same :meth:`SlateServer.recommend` as `vistaste serve`), users click by
their ground-truth model (position bias, fatigue, trends), the arm appends those impressions and
clicks to *its own* log, and its model is warm-started on that log before the next day. Arms share
the starting log, the active users and the click dice (common random numbers), so differences come
from the policies. An oracle arm (ranks by true click probability) gives the regret reference.

Users are the world's :class:`~vistaste.bench.truth.UserState`, the click model that wrote the logs:
each arm starts from that state replayed over the starting log and then carries its own (its users tire
of what it shows, follow the trends they click, come back or not). When the world's behaviours are on
(``WorldConfig.with_behaviours``), the arms' audiences differ: of the users who would come today
("eligible", shared), each arm keeps those its own users' engagement brings back, and users scan its
slates top-down and may leave early. With them off, every figure is the one made before them. The oracle
ranks by today's true click probability (satiation and trend pull included) but is myopic: it ignores
boredom and return, so in such a world a diversified arm may beat it.

The simulator skips SavedModel serialisation each day (seconds per export) but serves what an export would
hold with the same index class (:class:`CatalogScaNN`), seen-item policy, popular fallback, trend boost and
re-ranker as `vistaste serve` (tests/test_sim_serving_path.py checks the slates are the exported model's).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits
from tqdm.auto import tqdm

from vistaste.bench.world import START, GroundTruth, UserState
from vistaste.data.io import atomic_path, read_table, write_json
from vistaste.data.pca import VectorPCA
from vistaste.data.seen import SeenPolicy
from vistaste.data.trends import TrendSetting, catalog_tags
from vistaste.data.vectors import unit_rows
from vistaste.serving.index import build_index
from vistaste.serving.recommender import SlateServer, UnknownItems
from vistaste.serving.rerank import Candidates
from vistaste.towers.config import CANDIDATES
from vistaste.towers.features import PAD, ItemTable, latest_histories, positives
from vistaste.towers.training import TrainConfig, TrainedTwoTower, build_model, find_vectors, fit_on_logs

ARMS = ("most-popular", "pretrained-kNN", "two-tower", "two-tower+MMR", "two-tower+DPP", "two-tower+DPP+trend", "two-tower+adaptive",
        "oracle")
# Two-tower arms: what each passes to the serving path (SlateServer.recommend) besides the user and k. A
# trade_off of None is the method's serving default; SimulationConfig.trade_off overrides it for every arm.
RERANK: dict[str, dict] = {"two-tower": {"method": "none"}, "two-tower+MMR": {"method": "mmr"}, "two-tower+DPP": {"method": "dpp"},
                           "two-tower+DPP+trend": {"method": "dpp", "trend": True}, "two-tower+adaptive": {"method": "adaptive"}}


@dataclasses.dataclass(frozen=True)
class SimulationConfig:
    warmup_days: int = 14  # the world's first days of logs are every arm's starting log
    days: int = 14  # simulated days
    seeds: tuple[int, ...] = (0, 1, 2)
    arms: tuple[str, ...] = ARMS
    slate_size: int = 12
    candidates: int = CANDIDATES
    initial_epochs: int = 8
    daily_epochs: int = 2
    trade_off: float | None = None  # None: each method's default (see rerank.DEFAULT_TRADE_OFF)
    trend_weight: float = 0.1  # the "+trend" arm's boost (the other arms have none)
    # More two-tower arms: name -> options for the serving path (as RERANK's values), e.g.
    # {"two-tower+MMR0.7": {"method": "mmr", "trade_off": 0.7}}: settings compared on validation seeds.
    variants: tuple[tuple[str, tuple[tuple[str, object], ...]], ...] = ()
    activity_a: float = 2.0  # users' daily activity ~ Beta(a, b)
    activity_b: float = 3.0

    def __post_init__(self):
        unknown = set(self.arms) - set(ARMS) - set(self.serving_options())
        if unknown:
            raise ValueError(f"unknown arms {sorted(unknown)}; choose from {ARMS} or name them in variants")
        if "oracle" not in self.arms:
            raise ValueError("the oracle arm is required: regret is measured against it")
        if self.days <= 0 or self.warmup_days <= 0:
            raise ValueError(f"days and warmup_days must be positive, got {self.days} and {self.warmup_days}")

    @classmethod
    def with_variants(cls, variants: dict[str, dict], **config) -> "SimulationConfig":
        """A config whose ``arms`` may name the extra two-tower arms in ``variants`` (name -> serving options)."""
        return cls(variants=tuple((name, tuple(sorted(options.items()))) for name, options in variants.items()), **config)

    def serving_options(self) -> dict[str, dict]:
        """Two-tower arm name -> keyword arguments for :meth:`SlateServer.recommend` (method, trade_off,
        trend_weight), RERANK's and the variants'."""
        out = {}
        for name, options in [*RERANK.items(), *((n, dict(o)) for n, o in self.variants)]:
            options = dict(options)
            trend = options.pop("trend", False)
            if self.trade_off is not None:
                options["trade_off"] = self.trade_off
            options.setdefault("trend_weight", self.trend_weight if trend else 0.0)
            out[name] = {"trade_off": None, **options}
        return out


class _Arm:
    """One policy with its own log, its users' click histories and (for two-tower arms) its own model."""

    def __init__(self, name: str, base_logs: pd.DataFrame, n_users: int, users: UserState):
        self.name = name
        self.logs = [base_logs]
        self.clicked: list[list[int]] = [[] for _ in range(n_users)]
        self.model: TrainedTwoTower | None = None
        self.users = users  # this arm's users: how they react to what it serves
        self.last_slate: dict[int, np.ndarray] = {}  # user -> table rows served on their last visit (diversity over time)
        self.click_log: list[tuple[int, int, pd.Timestamp]] = []  # (day, item row, time) of this arm's clicks: popularity, trends

    def all_logs(self) -> pd.DataFrame:
        if len(self.logs) > 1:
            self.logs = [pd.concat(self.logs, ignore_index=True)]
        return self.logs[0]


def _top_k_excluding(scores: np.ndarray, exclude: list[np.ndarray], k: int) -> np.ndarray:
    scores = scores.astype(np.float64).copy()
    for u, rows in enumerate(exclude):
        if len(rows):
            scores[u, rows] = -np.inf
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.where(np.take_along_axis(scores, order, axis=1) > -np.inf, order, PAD)


def run_seed(world_dir: Path, config: SimulationConfig, seed: int, progress: bool = True) -> dict:
    truth = GroundTruth.load(world_dir / "ground_truth")
    world = truth.config
    if world.days <= config.warmup_days:
        raise ValueError(f"the world has {world.days} days of logs; warmup_days must be fewer, got {config.warmup_days}")
    catalog = read_table(world_dir / "catalog.parquet")
    from vistaste.data.embedding import load_vectors

    ids, raw_vectors = load_vectors(find_vectors(world_dir))
    raw = ItemTable.build(ids, raw_vectors, catalog)
    train_config = TrainConfig(seed=seed)
    policy = SeenPolicy()  # what `vistaste serve` hides by default: everything consumed, and yesterday's impressions
    pca = VectorPCA(min(train_config.input_dim, len(raw) - 1)).fit(raw.vectors) if raw.vectors.shape[1] > train_config.input_dim else None
    table = raw.with_projection(pca)
    truth_rows = truth.item_index(table.ids)  # table row -> ground-truth item index
    created_day = truth.item_created_day[truth_rows]
    raw_unit = unit_rows(raw.vectors)
    n_users = len(truth.user_ids)

    logs = read_table(world_dir / "interactions.parquet")
    logs["timestamp"] = pd.to_datetime(logs["timestamp"], utc=True)
    base = logs[logs["timestamp"] < START + pd.Timedelta(days=config.warmup_days)].reset_index(drop=True)
    rng = np.random.default_rng([seed, 2024])
    # Dice for the behaviours (return, boredom) come from their own stream, drawn only when they are on.
    behaviour_rng = np.random.default_rng([seed, 2024, 13])
    activity = rng.beta(config.activity_a, config.activity_b, n_users)

    start = UserState(truth).replay(base, config.warmup_days)  # the users as the logged days left them
    arms = {name: _Arm(name, base, n_users, start.copy()) for name in config.arms}
    row_of = {item: r for r, item in enumerate(table.ids)}
    user_of = {u: i for i, u in enumerate(truth.user_ids)}
    base_clicks = base[base["event"].isin(["click", "save"])]
    for arm in arms.values():
        for user, item, ts in zip(base_clicks["user_id"], base_clicks["item_id"], base_clicks["timestamp"]):
            if item in row_of and (not arm.clicked[user_of[user]] or arm.clicked[user_of[user]][-1] != row_of[item]):
                arm.clicked[user_of[user]].append(row_of[item])
            arm.click_log.append(((ts - START).days, row_of.get(item, PAD), ts))

    serving = config.serving_options()
    item_tags = catalog_tags(catalog)
    if any(name in serving for name in config.arms):
        import tf_keras

        tf_keras.utils.set_random_seed(seed)
        initial = fit_on_logs(base, table, train_config, epochs=config.initial_epochs, pca=pca, seed=seed)
        weights = initial.model.get_weights()
        for name in config.arms:
            if name in serving:
                model = build_model(train_config, initial.model.user_tower.user_vocabulary, initial.model.item_tower.item_vocabulary)
                clone = TrainedTwoTower(train_config, model, table, pca, {}).build()
                model.set_weights(weights)
                model.compile(optimizer=tf_keras.optimizers.Adam(train_config.learning_rate))
                arms[name].model = clone

    records = []
    days = range(config.warmup_days, config.warmup_days + config.days)
    for day in tqdm(days, desc=f"simulate seed {seed}", unit="day", disable=not progress):
        available = np.flatnonzero(created_day <= day)
        eligible = np.flatnonzero(rng.random(n_users) < activity)  # who would come today, fully engaged
        k = config.slate_size
        dice = rng.random((len(eligible), k))  # shared across arms: common random numbers
        seconds = rng.integers(0, 80_000, len(eligible))
        return_dice = behaviour_rng.random(len(eligible)) if world.return_sensitivity else None
        stop_dice = behaviour_rng.random((len(eligible), k)) if world.boredom else None
        now = START + pd.Timedelta(days=day)
        oracle_clicks = None
        for name, arm in arms.items():
            came = arm.users.visits(eligible, return_dice)
            active = eligible[came]
            true_logits = arm.users.logits(active, truth_rows, day + 0.5)  # [active, items] by table row
            if name in serving:  # the serving path, as `vistaste serve` would answer with this arm's model exported now
                server = ArmServer(arm.model, table, available, arm.all_logs(), now, policy, item_tags, f"{name}/day{day}",
                                   max(config.candidates, k))
                slates = server.slates(np.asarray(truth.user_ids)[active], k, n_candidates=config.candidates, **serving[name])
            else:  # the baselines and the oracle: their own ranking, the same seen-item policy
                exclude = _seen_rows(arm.all_logs(), active, truth, table, now, policy)
                slates = _serve(name, arm, active, available, table, raw_unit, true_logits, exclude, config, now, day, truth)
            # Users react by the world's click model: taste, state, quality, trend, position bias, fatigue, boredom.
            valid = slates != PAD
            safe = np.where(valid, slates, 0)
            response = arm.users.respond(active, truth_rows[safe], day + 0.5, dice[came], None if stop_dice is None else stop_dice[came],
                                         valid, np.take_along_axis(true_logits, safe, axis=1))
            clicks, examined = response.clicks, response.examined
            new_rows = []
            arrival = seconds[came]
            for a, user in enumerate(active):
                for pos in np.flatnonzero(examined[a]):
                    item = table.ids[slates[a, pos]]
                    t = now + pd.Timedelta(seconds=int(arrival[a]) + int(pos))
                    new_rows.append((truth.user_ids[user], item, t, "impression", float(pos)))
                    if clicks[a, pos]:
                        new_rows.append((truth.user_ids[user], item, t + pd.Timedelta(seconds=3), "click", float(pos)))
                        arm.clicked[user].append(int(slates[a, pos]))
                        arm.click_log.append((day, int(slates[a, pos]), t))
            arm.logs.append(pd.DataFrame(new_rows, columns=["user_id", "item_id", "timestamp", "event", "position"]))
            arm.users.end_day()
            shown = slates[valid]
            impressions = int(examined.sum())
            n_clicks = int(clicks.sum())
            cold = created_day[slates[clicks]] >= config.warmup_days if n_clicks else np.array([])
            diversity = [1 - (raw_unit[r] @ raw_unit[r].T)[np.triu_indices(len(r), 1)].mean()
                         for r in (row[row != PAD] for row in slates) if len(r) > 1]
            over_time = []
            for user, row in zip(active, slates):
                row = row[row != PAD]
                previous = arm.last_slate.get(int(user))
                if previous is not None and len(row) and len(previous):
                    over_time.append(1 - float((raw_unit[row] @ raw_unit[previous].T).mean()))
                arm.last_slate[int(user)] = row
            expected_clicks = float((response.probability * response.examine_probability).sum())
            looked = float(response.examine_probability.sum())
            if name == "oracle":
                oracle_clicks = expected_clicks
            records.append({
                "seed": seed, "day": int(day), "arm": name, "active_users": int(len(active)), "impressions": impressions,
                "clicks": n_clicks,
                "ctr": n_clicks / impressions if impressions else 0.0, "expected_ctr": expected_clicks / looked if looked else 0.0,
                "clicks_per_user": n_clicks / max(len(active), 1), "coverage": float(len(np.unique(shown)) / len(available)),
                "diversity": float(np.mean(diversity)) if diversity else 0.0, "cold_click_share": float(cold.mean()) if len(cold) else 0.0,
                "users": n_users, "eligible_users": int(len(eligible)), "returning_share": len(active) / max(len(eligible), 1),
                "clicks_per_eligible_user": n_clicks / max(len(eligible), 1), "expected_clicks": expected_clicks,
                "temporal_diversity": float(np.mean(over_time)) if over_time else np.nan, "cold_clicks": int(cold.sum()),
            })
        for record in records[-len(arms):]:  # the oracle arm's expected clicks less this arm's, per eligible user
            record["regret_clicks"] = (oracle_clicks - record["expected_clicks"]) / max(record["eligible_users"], 1)
        for name, arm in arms.items():  # tomorrow's models learn from today's clicks (each from its own log only)
            if arm.model is not None:
                arm.model = fit_on_logs(arm.all_logs(), table, train_config, epochs=config.daily_epochs, initial=arm.model, pca=pca,
                                        seed=seed + day)
    frame = pd.DataFrame(records)
    oracle = frame[frame["arm"] == "oracle"].set_index(["seed", "day"])["expected_ctr"]
    frame["regret"] = oracle.reindex(pd.MultiIndex.from_frame(frame[["seed", "day"]])).to_numpy() - frame["expected_ctr"]
    return {"records": frame.to_dict(orient="records"), "logs": {name: arm.all_logs() for name, arm in arms.items()}}


def _seen_rows(logs: pd.DataFrame, active: np.ndarray, truth, table: ItemTable, now: pd.Timestamp, policy: SeenPolicy) -> list[np.ndarray]:
    """What the seen-item policy (the one `vistaste serve` applies) hides from each active user now."""
    users = np.asarray(truth.user_ids)[active]
    mine = logs[logs["user_id"].isin(set(users))]
    hidden = policy.seen_by_user(mine.assign(row=table.rows(mine["item_id"].to_numpy(), unknown="pad")), now, value="row")
    empty = np.zeros(0, np.int64)
    return [hidden.get(u, empty) for u in users]


def _serve(name, arm, active, available, table, raw_unit, true_logits, exclude, config, now, day, truth) -> np.ndarray:
    """Slates [active, k] of table rows (PAD where an arm has fewer items) for a baseline arm or the oracle on
    one day (two-tower arms are served by :class:`ArmServer`, the serving path)."""
    k = config.slate_size
    mask = np.full(len(table), -np.inf)
    mask[available] = 0.0
    if name == "oracle":
        return _top_k_excluding(true_logits + mask, exclude, k)
    recent = np.array([r for d, r, _ in arm.click_log if d >= day - 7 and r != PAD], dtype=np.int64)
    popularity = np.bincount(recent, minlength=len(table)).astype(float)
    if name == "most-popular":
        return _top_k_excluding(np.tile(popularity + mask, (len(active), 1)), exclude, k)
    history = np.full((len(active), 20), PAD)
    for a, user in enumerate(active):
        clicked = arm.clicked[user][-20:]
        if clicked:
            history[a, -len(clicked):] = clicked
    if name == "pretrained-kNN":
        has = history != PAD
        profile = (raw_unit[np.where(has, history, 0)] * has[..., None]).sum(axis=1)
        scores = profile @ raw_unit.T + mask
        empty = ~has.any(axis=1)
        scores[empty] = popularity + mask
        return _top_k_excluding(scores, exclude, k)
    raise ValueError(f"unknown arm {name!r}")


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
        recent = rows[(pos["timestamp"] >= pos["timestamp"].max() - pd.Timedelta(days=7)).to_numpy()] if len(pos) else rows
        self.popularity = np.bincount(recent, minlength=len(available)).astype(np.float64)
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
        length = self.model.config.history_length
        rows = [int(self._table_rows[self.row[i]]) for i in history if i in self.row][-length:]
        return np.array([PAD] * (length - len(rows)) + rows, dtype=np.int64)

    def prepare(self, user_ids, histories: list[list[str]] | None = None) -> None:
        """Score many users at once (one tower call, one index query): :meth:`candidates` then reads these."""
        user_ids = [str(u) for u in user_ids]
        histories = [self.stored_history(u) for u in user_ids] if histories is None else histories
        rows = np.stack([self._history_rows(h) for h in histories]) if user_ids else np.zeros((0, 1), np.int64)
        todo = [a for a, u in enumerate(user_ids) if (u, rows[a].tobytes()) not in self._ranked]
        if not todo:
            return
        scores, ids = self.index(self.model.user_vectors(np.array(user_ids)[todo], rows[todo]))
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


def t_interval(values, level: float = 0.95) -> tuple[float, float]:
    """Mean of ``values`` and the half-width of its t interval: mean ± t(1 - (1 - level) / 2, n - 1) · sd / sqrt(n),
    sd with n - 1 degrees of freedom; the half-width is nan for fewer than two values (no made-up interval).

    Example: ``t_interval([1, 2, 3])`` = (2.0, 4.302653 * 1 / sqrt(3)) ≈ (2.0, 2.484).
    """
    from scipy import stats

    values = np.asarray(values, dtype=float)
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    n = len(values)
    if n == 0:
        raise ValueError("no values to summarise")
    mean = float(values.mean())
    if n < 2:
        return mean, float("nan")
    return mean, float(stats.t.ppf(1 - (1 - level) / 2, n - 1) * values.std(ddof=1) / np.sqrt(n))


METRICS = ("ctr", "clicks_per_user", "coverage", "diversity", "cold_click_share", "regret", "clicks_per_eligible_user",
           "temporal_diversity", "cold_clicks", "regret_clicks")


def summarise(records: pd.DataFrame) -> pd.DataFrame:
    """Per arm: mean over seeds of the per-seed averages over days, with a 95% t interval over seeds
    (:func:`t_interval`). Where the records have them, also per seed: ``total_clicks_per_user`` (all the
    arm's clicks over the simulated days / users in the world: leaving users count) and
    ``returning_share_last_day`` (of the users who would have come on the last day, the share who did)."""
    columns = [c for c in METRICS if c in records]
    per_seed = records.groupby(["arm", "seed"])[columns].mean()
    if {"clicks", "users"} <= set(records):
        totals = records.groupby(["arm", "seed"]).agg(clicks=("clicks", "sum"), users=("users", "first"))
        per_seed["total_clicks_per_user"] = totals["clicks"] / totals["users"]
    if "returning_share" in records:
        last = records[records["day"] == records.groupby("seed")["day"].transform("max")]
        per_seed["returning_share_last_day"] = last.groupby(["arm", "seed"])["returning_share"].mean()
    rows = {}
    for arm, block in per_seed.groupby(level=0):
        intervals = {c: t_interval(block[c].dropna()) if block[c].notna().any() else (np.nan, np.nan) for c in block}
        rows[arm] = {**{c: m for c, (m, _) in intervals.items()}, **{f"{c}_ci95": h for c, (_, h) in intervals.items()},
                     "seeds": len(block)}
    order = [a for a in ARMS if a in rows] + [a for a in records["arm"].unique() if a not in ARMS]  # variants in run order
    return pd.DataFrame(rows).T.loc[order]


def simulate(world_dir: str | Path, out_dir: str | Path, config: SimulationConfig = SimulationConfig(), progress: bool = True) -> dict:
    """Run every seed; write report.json, report.md, ctr_over_days.png and diversity_vs_ctr.png."""
    world_dir, out_dir = Path(world_dir), Path(out_dir)
    records = []
    for seed in config.seeds:
        records.extend(run_seed(world_dir, config, seed, progress)["records"])
    frame = pd.DataFrame(records)
    summary = summarise(frame)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = {"config": dataclasses.asdict(config), "summary": summary.reset_index(names="arm").to_dict(orient="records"),
              "records": records}
    write_json(report, out_dir / "report.json")
    columns = ["ctr", "ctr_ci95", "clicks_per_user", "coverage", "diversity", "cold_click_share", "regret", "regret_ci95"]
    columns += [c for c in ("total_clicks_per_user", "total_clicks_per_user_ci95", "returning_share_last_day", "temporal_diversity",
                            "cold_clicks", "regret_clicks") if c in summary]
    with atomic_path(out_dir / "report.md") as tmp:
        tmp.write_text(f"# Simulated A/B ({len(config.seeds)} seeds, {config.days} days)\n\n"
                       + summary[columns].astype(float).to_markdown(floatfmt=".4f") + "\n")
    _plots(frame, summary, out_dir)
    return report


def _plots(frame: pd.DataFrame, summary: pd.DataFrame, out_dir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for arm, block in frame.groupby("arm", sort=False):
        daily = block.groupby("day")["ctr"]
        mean, sem = daily.mean(), daily.sem().fillna(0)
        ax.plot(mean.index, mean.values, marker=".", label=arm)
        ax.fill_between(mean.index, mean - 1.96 * sem, mean + 1.96 * sem, alpha=0.15)
    ax.set(xlabel="day", ylabel="CTR", title="CTR per simulated day (mean over seeds, 95% band)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / "ctr_over_days.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4.5))
    for arm, row in summary.iterrows():
        ax.errorbar(row["diversity"], row["ctr"], yerr=row["ctr_ci95"] if np.isfinite(row["ctr_ci95"]) else None, fmt="o", capsize=3)
        ax.annotate(arm, (row["diversity"], row["ctr"]), fontsize=8, xytext=(4, 4), textcoords="offset points")
    ax.set(xlabel="intra-list diversity (pretrained embedding)", ylabel="CTR", title="diversity vs CTR")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_dir / "diversity_vs_ctr.png", dpi=110)
    plt.close(fig)
