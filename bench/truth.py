"""The built-in world's hidden truth: item attributes, users' taste mixtures, trends and the click
model they define (used to generate the logs, by the simulator's users and as evaluation's oracle).
The settings it is drawn from are in :mod:`vistaste.bench.world_config`; the users who carry state from
day to day under this click model, in :mod:`vistaste.bench.users`."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd

from vistaste.bench.world_config import (
    BEHAVIOUR_FIELDS,
    BEHAVIOUR_STRENGTHS,
    LAYOUTS,
    PALETTE_NAMES,
    PALETTES,
    PATTERNS,
    SHAPES,
    START,
    STYLES,
    WorldConfig,
)
from vistaste.data.io import write_json, write_table


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
        the best one is taken: how :class:`~vistaste.bench.users.UserState` applies satiation. None: the original model.
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
            # A world written without behaviours (before them, or with them off) names none: each is 0.
            config=WorldConfig(**{**dict.fromkeys(BEHAVIOUR_STRENGTHS, 0.0), **meta["config"]}),
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
