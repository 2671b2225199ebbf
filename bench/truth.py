"""The built-in world's hidden truth: item attributes, users' taste mixtures, trends and the click
model they define (used to generate the logs, by the simulator's users and as evaluation's oracle)."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd

from vistaste.data.io import write_json, write_table

PALETTES: dict[str, tuple[tuple[int, int, int], ...]] = {
    "sunset": ((253, 186, 116), (239, 83, 80), (123, 31, 162)),
    "ocean": ((224, 247, 250), (0, 131, 143), (26, 35, 126)),
    "forest": ((232, 245, 233), (56, 142, 60), (62, 39, 35)),
    "pastel": ((255, 240, 245), (179, 157, 219), (129, 212, 250)),
    "mono": ((245, 245, 245), (97, 97, 97), (20, 20, 20)),
    "neon": ((20, 20, 30), (0, 230, 118), (255, 23, 200)),
    "earth": ((239, 235, 220), (161, 136, 127), (191, 110, 40)),
    "berry": ((252, 228, 236), (194, 24, 91), (74, 20, 140)),
}
PATTERNS = ("stripes", "dots", "checks", "florals", "gradient", "zigzag")
STYLES = ("fine", "medium", "bold")
SHAPES = ("circle", "square", "triangle", "star", "diamond")
LAYOUTS = ("center", "left", "right", "top")
PALETTE_NAMES = tuple(PALETTES)
STYLE_PERIOD = {"fine": 12.0, "medium": 22.0, "bold": 40.0}  # pattern period in pixels at 224x224

START = pd.Timestamp("2026-01-01", tz="UTC")


@dataclasses.dataclass(frozen=True)
class WorldConfig:
    """Size and behaviour of a generated world (all defaults give ~100k events)."""

    items: int = 2000
    users: int = 1000
    days: int = 30
    seed: int = 0
    images: bool = True
    image_size: int = 224
    slate_size: int = 16
    launch_share: float = 0.75  # share of items present on day 0; the rest arrive over time (cold start)
    base_logit: float = -4.0
    palette_weight: float = 1.0
    pattern_weight: float = 1.2
    combo_weight: float = 2.6  # a taste is a palette *and* a pattern together: the match is worth more than its parts
    style_weight: float = 0.6
    trend_amplitude: float = 1.6
    position_decay: float = 0.5  # position bias = 1 / (1 + position) ** position_decay
    fatigue: float = 0.15  # click probability multiplier for an item the user already clicked
    save_rate: float = 0.15  # share of clicks that are followed by a save
    # Behaviours (issue 13), carried from day to day by :class:`UserState`. Each is off at 0 so worlds and
    # figures made before them reproduce exactly; :meth:`with_behaviours` turns them on (BEHAVIOUR_STRENGTHS).
    # Satiation: a taste's affinity is multiplied by exp(-satiation * s), where s counts the user's recent
    # clicks (1 each) and views (satiation_view_weight each) of items of that taste, and halves every
    # satiation_half_life days (rebounding bandits' s <- gamma * (s + pulls), Leqi et al. 2021).
    satiation: float = 0.0
    satiation_view_weight: float = 0.1
    satiation_half_life: float = 3.0
    # Slate boredom: users scan top-down (a cascade) and after each item leave with probability
    # boredom * redundancy, redundancy = the share of the items above it with its taste (palette and
    # pattern). Logged impressions are the items they looked at.
    boredom: float = 0.0
    # Trend following: a click on an item with a trend's attribute pulls the user toward it, closing
    # trend_pull_step (times the trend's current strength, 0..1) of the remaining distance (RecSim's
    # interest-evolution update); at full pull the attribute is worth trend_following logits to them.
    trend_following: float = 0.0
    trend_pull_step: float = 0.3
    trend_pull_half_life: float = 4.0
    # Return: a user visits on a day they would with probability 1 - return_sensitivity * (1 - engagement);
    # engagement is an exponential average (half-life engagement_half_life days, over days they came) of
    # their sessions' satisfaction 1 - exp(-clicks); new users start fully engaged.
    return_sensitivity: float = 0.0
    engagement_half_life: float = 3.0

    def __post_init__(self):
        for name in ("items", "users", "days", "slate_size", "image_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("satiation", "satiation_view_weight", "trend_following"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("boredom", "trend_pull_step", "return_sensitivity"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        for name in ("satiation_half_life", "trend_pull_half_life", "engagement_half_life"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive (days), got {getattr(self, name)}")

    @classmethod
    def with_behaviours(cls, satiation: float | None = None, boredom: float | None = None, trend_following: float | None = None,
                        return_sensitivity: float | None = None, **config) -> "WorldConfig":
        """A world whose users tire of tastes, get bored of monotonous slates, follow trends and come back
        when satisfied: BEHAVIOUR_STRENGTHS unless a strength is given (0 turns one off); ``config`` sets
        any other field. Example: ``WorldConfig.with_behaviours(boredom=0.0, users=200, images=False)``."""
        given = {"satiation": satiation, "boredom": boredom, "trend_following": trend_following,
                 "return_sensitivity": return_sensitivity}
        return cls(**{**BEHAVIOUR_STRENGTHS, **{k: v for k, v in given.items() if v is not None}, **config})

    @property
    def behaviours(self) -> dict[str, float]:
        """The four behaviour strengths (all 0: the world before issue 13)."""
        return {name: getattr(self, name) for name in BEHAVIOUR_STRENGTHS}


# Default strengths for WorldConfig.with_behaviours. The *shapes* come from the literature: satiation that
# grows with consumption and decays geometrically, penalising the reward (Leqi et al., "Rebounding bandits
# for modeling satiation effects", NeurIPS 2021); interest that moves a share of the remaining distance per
# consumed item (RecSim's interest evolution, Ie et al. 2019: alpha_y_intercept 0.3, hence trend_pull_step);
# a top-down cascade (Craswell et al., WSDM 2008; RecSim's attention_prob 0.9 per position). The
# *magnitudes* are our assumptions, not measurements: one view and click of a taste leave exp(-0.2 * 1.1) =
# 80% of its match and that loss halves every 3 days; a slate of one taste is left after 3 items on average
# (1 + 1 + 1/2 + 1/4 + ...), one without repeated tastes is read to the end; a click at a trend's peak is
# worth 0.3 logits to that user, halving every 4 days; a user whose sessions bring no clicks comes half as
# often as a satisfied one. With them on, the logging policy's CTR stays at a few percent (measured:
# 3.9% against 4.6% without, 1,500 items, 800 users, 42 days).
BEHAVIOUR_STRENGTHS: dict[str, float] = {"satiation": 0.2, "boredom": 0.5, "trend_following": 1.0, "return_sensitivity": 0.5}
BEHAVIOUR_FIELDS = ("satiation", "satiation_view_weight", "satiation_half_life", "boredom", "trend_following", "trend_pull_step",
                    "trend_pull_half_life", "return_sensitivity", "engagement_half_life")


@dataclasses.dataclass
class GroundTruth:
    """The hidden click model: item attributes, user taste components and trends.

    ``taste`` arrays have shape [users, components]; unused components have weight 0.
    """

    config: WorldConfig
    item_ids: np.ndarray
    item_palette: np.ndarray
    item_pattern: np.ndarray
    item_style: np.ndarray
    item_quality: np.ndarray
    item_created_day: np.ndarray
    item_shape: np.ndarray  # geometry: users do not care about it
    item_layout: np.ndarray
    user_ids: np.ndarray
    taste_palette: np.ndarray
    taste_pattern: np.ndarray
    taste_style: np.ndarray
    taste_weight: np.ndarray
    trends: list[dict]

    def trend_boost(self, items: np.ndarray, day: float) -> np.ndarray:
        """Logit boost from trending attributes for ``items`` (indices) on ``day``."""
        boost = np.zeros(len(items))
        for trend in self.trends:
            attr = getattr(self, f"item_{trend['attribute']}")[items]
            strength = trend["amplitude"] * np.exp(-(((day - trend["peak_day"]) / trend["width"]) ** 2))
            boost += strength * (attr == trend["value"])
        return boost

    def trend_strength(self, day) -> np.ndarray:
        """Each trend's strength relative to its peak (0..1) on ``day`` (a float or an array): [..., trends]."""
        day = np.asarray(day, dtype=float)[..., None]
        peak = np.array([t["peak_day"] for t in self.trends])
        width = np.array([t["width"] for t in self.trends])
        return np.exp(-(((day - peak) / width) ** 2))

    def trend_members(self, items: np.ndarray) -> np.ndarray:
        """[len(items), trends]: 1.0 where an item has a trend's attribute value."""
        columns = [getattr(self, f"item_{t['attribute']}")[items] == t["value"] for t in self.trends]
        return np.stack(columns, axis=-1).astype(float) if columns else np.zeros((len(items), 0))

    def logits(self, users: np.ndarray, items: np.ndarray, day: float, taste_factor: np.ndarray | None = None) -> np.ndarray:
        """Click logits at position 0, no fatigue: shape [len(users), len(items)].

        ``taste_factor`` ([len(users), components], optional) scales each taste component's match before
        the best one is taken: how :class:`UserState` applies satiation. None: the original model.
        """
        c = self.config
        palette = self.taste_palette[users][:, :, None] == self.item_palette[items][None, None, :]
        pattern = self.taste_pattern[users][:, :, None] == self.item_pattern[items][None, None, :]
        match = (
            c.palette_weight * palette + c.pattern_weight * pattern + c.combo_weight * (palette & pattern)
            + c.style_weight * (self.taste_style[users][:, :, None] == self.item_style[items][None, None, :])
        ) * self.taste_weight[users][:, :, None]
        if taste_factor is not None:
            match = match * taste_factor[:, :, None]
        affinity = match.max(axis=1)
        return c.base_logit + affinity + self.item_quality[items][None, :] + self.trend_boost(items, day)[None, :]

    def taste_hits(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """How much each (user, item) pair's item is of each of the user's tastes: [len(users), components]
        in 0..1 (1: palette and pattern both match; a palette or a pattern alone counts its share of the
        match weight; components the user lacks count 0). ``users`` and ``items`` are paired, not crossed."""
        c = self.config
        palette = self.taste_palette[users] == self.item_palette[items][:, None]
        pattern = self.taste_pattern[users] == self.item_pattern[items][:, None]
        hit = (c.palette_weight * palette + c.pattern_weight * pattern + c.combo_weight * (palette & pattern)) / (
            c.palette_weight + c.pattern_weight + c.combo_weight)
        return hit * (self.taste_weight[users] > 0)

    def click_probability(self, users: np.ndarray, items: np.ndarray, day: float) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-self.logits(users, items, day)))

    def user_index(self, user_ids) -> np.ndarray:
        lookup = {u: i for i, u in enumerate(self.user_ids)}
        return np.array([lookup[u] for u in user_ids], dtype=np.int64)

    def item_index(self, item_ids) -> np.ndarray:
        lookup = {u: i for i, u in enumerate(self.item_ids)}
        return np.array([lookup[u] for u in item_ids], dtype=np.int64)

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        write_table(
            pd.DataFrame(
                {
                    "item_id": self.item_ids,
                    "palette": np.array(PALETTE_NAMES)[self.item_palette],
                    "pattern": np.array(PATTERNS)[self.item_pattern],
                    "style": np.array(STYLES)[self.item_style],
                    "quality": self.item_quality,
                    "created_day": self.item_created_day,
                    "shape": np.array(SHAPES)[self.item_shape],
                    "layout": np.array(LAYOUTS)[self.item_layout],
                }
            ),
            directory / "items.parquet",
        )
        write_table(
            pd.DataFrame(
                {
                    "user_id": self.user_ids,
                    "taste_palette": list(self.taste_palette),
                    "taste_pattern": list(self.taste_pattern),
                    "taste_style": list(self.taste_style),
                    "taste_weight": list(self.taste_weight),
                }
            ),
            directory / "users.parquet",
        )
        config = dataclasses.asdict(self.config)
        if not any(self.config.behaviours.values()):  # a world without behaviours writes the same file as before them
            config = {k: v for k, v in config.items() if k not in BEHAVIOUR_FIELDS}
        write_json({"config": config, "trends": self.trends}, directory / "world.json")

    @classmethod
    def load(cls, directory: str | Path) -> "GroundTruth":
        directory = Path(directory)
        meta = json.loads((directory / "world.json").read_text())
        items = pd.read_parquet(directory / "items.parquet")
        users = pd.read_parquet(directory / "users.parquet")
        stack = lambda col: np.stack(users[col].to_numpy())  # noqa: E731
        return cls(
            config=WorldConfig(**meta["config"]),
            item_ids=items["item_id"].to_numpy(),
            item_palette=items["palette"].map(PALETTE_NAMES.index).to_numpy(),
            item_pattern=items["pattern"].map(PATTERNS.index).to_numpy(),
            item_style=items["style"].map(STYLES.index).to_numpy(),
            item_quality=items["quality"].to_numpy(),
            item_created_day=items["created_day"].to_numpy(),
            item_shape=items["shape"].map(SHAPES.index).to_numpy(),
            item_layout=items["layout"].map(LAYOUTS.index).to_numpy(),
            user_ids=users["user_id"].to_numpy(),
            taste_palette=stack("taste_palette"),
            taste_pattern=stack("taste_pattern"),
            taste_style=stack("taste_style"),
            taste_weight=stack("taste_weight"),
            trends=meta["trends"],
        )


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


def make_truth(config: WorldConfig, rng: np.random.Generator) -> GroundTruth:
    n, m = config.items, config.users
    item_ids = np.array([f"i{k:07d}" for k in range(n)])
    created_day = np.where(rng.random(n) < config.launch_share, 0, rng.integers(1, max(config.days, 2), n))
    shapes = rng.integers(0, len(SHAPES), n)
    layouts = rng.integers(0, len(LAYOUTS), n)
    components = 3
    count = rng.choice([1, 2, 3], size=m, p=[0.6, 0.3, 0.1])
    weight = np.where(np.arange(components)[None, :] < count[:, None], rng.uniform(0.8, 1.2, (m, components)), 0.0)
    trends = [
        {"attribute": "pattern", "value": int(rng.integers(len(PATTERNS))), "peak_day": config.days * rng.uniform(0.4, 0.6),
         "width": max(config.days / 7, 1.0), "amplitude": config.trend_amplitude},
        {"attribute": "palette", "value": int(rng.integers(len(PALETTES))), "peak_day": config.days * rng.uniform(0.55, 0.75),
         "width": max(config.days / 8, 1.0), "amplitude": config.trend_amplitude * 0.75},
    ]
    for trend in trends:
        names = PATTERNS if trend["attribute"] == "pattern" else PALETTE_NAMES
        trend["value_name"] = names[trend["value"]]
    truth = GroundTruth(
        config=config,
        item_ids=item_ids,
        item_palette=rng.integers(0, len(PALETTES), n),
        item_pattern=rng.integers(0, len(PATTERNS), n),
        item_style=rng.integers(0, len(STYLES), n),
        item_quality=rng.normal(0, 0.4, n),
        item_created_day=created_day,
        item_shape=shapes,
        item_layout=layouts,
        user_ids=np.array([f"u{k:06d}" for k in range(m)]),
        taste_palette=rng.integers(0, len(PALETTES), (m, components)),
        taste_pattern=rng.integers(0, len(PATTERNS), (m, components)),
        taste_style=rng.integers(0, len(STYLES), (m, components)),
        taste_weight=weight,
        trends=trends,
    )
    return truth


def item_feature_vectors(truth: GroundTruth, seed: int, dim_noise: float = 0.3) -> np.ndarray:
    """Stand-in "pixels" for --no-images worlds: one-hot attributes plus noise, geometry weighted
    more than taste, like an off-the-shelf visual embedding that sees shape before palette."""
    rng = np.random.default_rng([seed, 7])
    blocks = [
        np.eye(len(PALETTES))[truth.item_palette],
        np.eye(len(PATTERNS))[truth.item_pattern],
        np.eye(len(STYLES))[truth.item_style] * 0.6,
        np.eye(len(SHAPES))[truth.item_shape] * 1.3,
        np.eye(len(LAYOUTS))[truth.item_layout] * 1.1,
    ]
    vectors = np.concatenate(blocks, axis=1)
    vectors = vectors + rng.normal(0, dim_noise, vectors.shape)
    return vectors.astype(np.float32)



def oracle_scorers(dataset_dir: str | Path, truth_dir: str | Path | None = None):
    """For :func:`vistaste.towers.evaluation.evaluate`'s ``extra_scorers``: an "oracle" ranking by true
    click probability at the middle of the test period, or None when the dataset has no ground truth."""
    truth_dir = Path(truth_dir) if truth_dir else Path(dataset_dir) / "ground_truth"
    if not (truth_dir / "world.json").exists():
        return None
    truth = GroundTruth.load(truth_dir)

    def scorers(split, table) -> dict:
        day = ((split.test_start - START).total_seconds() + (split.end - split.test_start).total_seconds() / 2) / 86_400
        items = truth.item_index(table.ids)
        return {"oracle": lambda s: truth.logits(truth.user_index(s.user_ids), items, day)}

    return scorers
