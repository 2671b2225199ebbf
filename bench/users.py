"""The world's users from day to day: :class:`UserState`, the one click model with state (fatigue,
satiation, trend pull, engagement) shared by the logging policy, the online simulator and the tests, and
:class:`SlateResponse`, how they met a slate. The hidden truth they click by is :mod:`vistaste.bench.truth`.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from vistaste.bench.truth import GroundTruth
from vistaste.bench.world_config import PATTERNS, START


@dataclasses.dataclass
class SlateResponse:
    """How users met their slates, all [users, k]: ``examined`` the positions they looked at (the cascade;
    what is logged as impressions), ``clicks``, ``probability`` of a click on a looked-at item (taste,
    state, position bias and fatigue) and ``examine_probability`` of looking at each position."""

    examined: np.ndarray
    clicks: np.ndarray
    probability: np.ndarray
    examine_probability: np.ndarray

    @property
    def expected_clicks(self) -> np.ndarray:
        """[users]: clicks expected before the dice (probability x examine_probability, summed)."""
        return (self.probability * self.examine_probability).sum(axis=1)


class UserState:
    """What the world's users carry from day to day: the one click model used by the logging policy
    (:func:`vistaste.bench.world.generate_world`), the online simulator and the tests.

    State per user: items clicked (fatigue), satiation per taste component, pull toward each trend, and
    engagement (drives return). Each day: :meth:`visits` says who comes, :meth:`respond` shows each a slate
    (and updates their state), :meth:`end_day` ages the state by a day. With every behaviour off
    (``WorldConfig``'s defaults) :meth:`respond` gives the click probabilities of the world before them,
    bit for bit.

    Example (one user, two items, day 3)::

        state = UserState(truth)
        r = state.respond(np.array([0]), np.array([[5, 9]]), 3.5, dice=np.random.default_rng(0).random((1, 2)))
        r.clicks  # bool [1, 2]: which of the two items user 0 clicked
        state.end_day()
    """

    def __init__(self, truth: GroundTruth):
        self.truth = truth
        self.config = truth.config
        m, components = truth.taste_weight.shape
        self.clicked: set[int] = set()  # user * items + item, for fatigue
        self.satiation = np.zeros((m, components))
        self.trend_pull = np.zeros((m, len(truth.trends)))
        self.engagement = np.ones(m)
        self.session_clicks = np.zeros(m)
        self.visited = np.zeros(m, dtype=bool)

    def copy(self) -> "UserState":
        """An independent copy (same truth), e.g. one per simulated arm after replaying the shared log."""
        other = object.__new__(UserState)
        other.__dict__.update({k: (v.copy() if isinstance(v, (np.ndarray, set)) else v) for k, v in self.__dict__.items()})
        return other

    # ------------------------------------------------------------------ the click model with state
    def taste_factor(self, users: np.ndarray) -> np.ndarray | None:
        """[len(users), components]: how much of each taste is left after satiation (None when it is off)."""
        return np.exp(-self.config.satiation * self.satiation[users]) if self.config.satiation else None

    def logits(self, users: np.ndarray, items: np.ndarray, day: float) -> np.ndarray:
        """True click logits now, [len(users), len(items)]: the ground truth with satiation and trend pull."""
        logits = self.truth.logits(users, items, day, self.taste_factor(users))
        if self.config.trend_following:
            logits = logits + self.config.trend_following * (self.trend_pull[users] @ self.truth.trend_members(items).T)
        return logits

    def redundancy(self, slates: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
        """[users, k]: the share of the (valid) items above each item that have its taste (palette and
        pattern), 0 at the top. E.g. palettes/patterns (a, x), (a, x), (b, x), (a, x) -> [0, 1, 0, 2/3]."""
        valid = np.ones(slates.shape, dtype=bool) if valid is None else valid
        taste = self.truth.item_palette[slates] * len(PATTERNS) + self.truth.item_pattern[slates]
        overlap = taste[:, :, None] == taste[:, None, :]
        above = np.tril(np.ones(slates.shape[1:] * 2, dtype=bool), -1)[None] & valid[:, None, :] & valid[:, :, None]
        count = above.sum(axis=2)
        return np.where(count > 0, (overlap * above).sum(axis=2) / np.maximum(count, 1), 0.0)

    def respond(self, users: np.ndarray, slates: np.ndarray, day: float, dice: np.ndarray, stop_dice: np.ndarray | None = None,
                valid: np.ndarray | None = None, logits: np.ndarray | None = None) -> SlateResponse:
        """Users (indices) meet their slates ([users, k] item indices, top first) at ``day``; their state
        takes in what they saw and clicked. ``dice`` ([users, k], uniform) decide clicks, ``stop_dice``
        ([users, k]) where a bored user leaves (needed when boredom is on). ``valid`` marks real items
        (default all); ``logits`` ([users, k]) may be given when already computed by :meth:`logits`."""
        c = self.config
        k = slates.shape[1]
        valid = np.ones(slates.shape, dtype=bool) if valid is None else valid
        safe = np.where(valid, slates, 0)
        if logits is None:
            items, inverse = np.unique(safe, return_inverse=True)
            logits = self.logits(users, items, day)[np.arange(len(users))[:, None], inverse.reshape(safe.shape)]
        p = 1.0 / (1.0 + np.exp(-logits)) / (1.0 + np.arange(k))[None, :] ** c.position_decay
        fatigue = np.array([[u * len(self.truth.item_ids) + i in self.clicked for i in row] for u, row in zip(users, safe)],
                           dtype=bool).reshape(safe.shape)
        p = np.where(fatigue, p * c.fatigue, p) * valid
        if c.boredom:
            if stop_dice is None:
                raise ValueError("boredom is on: stop_dice ([users, k] uniform) decide where users leave")
            stop = c.boredom * self.redundancy(safe, valid) * valid
            before = np.cumprod(1.0 - stop, axis=1)
            examine_probability = np.concatenate([np.ones((len(users), 1)), before[:, :-1]], axis=1) * valid
            left = np.cumsum(stop_dice < stop, axis=1)
            examined = valid & (np.concatenate([np.zeros((len(users), 1), dtype=left.dtype), left[:, :-1]], axis=1) == 0)
        else:
            examine_probability, examined = valid.astype(float), valid
        clicks = examined & (dice < p)
        rows, cols = np.nonzero(examined)
        self.observe(users[rows], safe[rows, cols], clicks[rows, cols], day)
        return SlateResponse(examined, clicks, p, examine_probability)

    def observe(self, users: np.ndarray, items: np.ndarray, clicked: np.ndarray, day) -> None:
        """Take in looked-at items (flat, paired arrays; ``clicked`` bool; ``day`` a float or one per row)."""
        c = self.config
        users, items, clicked = np.asarray(users, dtype=np.int64), np.asarray(items, dtype=np.int64), np.asarray(clicked, dtype=bool)
        self.clicked.update((users[clicked] * len(self.truth.item_ids) + items[clicked]).tolist())
        self.visited[users] = True
        np.add.at(self.session_clicks, users, clicked.astype(float))
        if c.satiation:
            weight = c.satiation_view_weight + clicked
            np.add.at(self.satiation, users, self.truth.taste_hits(users, items) * weight[:, None])
        if c.trend_following and clicked.any():
            day = np.broadcast_to(np.asarray(day, dtype=float), users.shape)[clicked]
            step = c.trend_pull_step * self.truth.trend_strength(day) * self.truth.trend_members(items[clicked])
            remaining = 1.0 - self.trend_pull
            for t in range(remaining.shape[1]):
                np.multiply.at(remaining[:, t], users[clicked], 1.0 - step[:, t])
            self.trend_pull = 1.0 - remaining

    # ------------------------------------------------------------------ days and visits
    def end_day(self) -> None:
        """A day passes: today's sessions update engagement; satiation and trend pull decay."""
        c = self.config
        memory = 0.5 ** (1.0 / c.engagement_half_life)
        satisfaction = 1.0 - np.exp(-self.session_clicks)
        self.engagement = np.where(self.visited, memory * self.engagement + (1 - memory) * satisfaction, self.engagement)
        self.session_clicks[:] = 0.0
        self.visited[:] = False
        if c.satiation:
            self.satiation *= 0.5 ** (1.0 / c.satiation_half_life)
        if c.trend_following:
            self.trend_pull *= 0.5 ** (1.0 / c.trend_pull_half_life)

    def return_probability(self, users: np.ndarray) -> np.ndarray:
        """Probability that each user, on a day they would come when fully engaged, does come."""
        return 1.0 - self.config.return_sensitivity * (1.0 - self.engagement[users])

    def visits(self, users: np.ndarray, dice: np.ndarray | None = None) -> np.ndarray:
        """Bool mask over ``users``: who comes back today (all of them when return is off; else ``dice`` decide)."""
        if not self.config.return_sensitivity:
            return np.ones(len(users), dtype=bool)
        if dice is None:
            raise ValueError("return is on: dice (one uniform per user) decide who comes back")
        return dice < self.return_probability(users)

    def replay(self, logs: pd.DataFrame, days: int) -> "UserState":
        """Take in the first ``days`` days of a log written by :func:`vistaste.bench.world.generate_world`
        (impressions and clicks, ending each day), e.g. to start a simulation from the state the logged days
        left. The world logs an impression at its session's start + position seconds. Returns self."""
        logs = logs[logs["event"].isin(["impression", "click"])]
        day = ((logs["timestamp"] - START).dt.total_seconds() / 86_400).to_numpy()
        frame = pd.DataFrame({"user": self.truth.user_index(logs["user_id"]), "item": self.truth.item_index(logs["item_id"]),
                              "click": (logs["event"] == "click").to_numpy(), "day": np.floor(day).astype(np.int64),
                              "session": day - logs["position"].to_numpy() / 86_400})
        clicks = frame.loc[frame["click"], ["user", "item", "day"]].drop_duplicates().assign(clicked=True)
        shown = frame[~frame["click"]].merge(clicks, on=["user", "item", "day"], how="left")
        shown["clicked"] = shown["clicked"].astype("boolean").fillna(False).astype(bool)
        for d in range(days):
            today = shown[shown["day"] == d]
            self.observe(today["user"].to_numpy(), today["item"].to_numpy(), today["clicked"].to_numpy(), today["session"].to_numpy())
            self.end_day()
        return self
