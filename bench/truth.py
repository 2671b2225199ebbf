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

    def __post_init__(self):
        for name in ("items", "users", "days", "slate_size", "image_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")


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

    def logits(self, users: np.ndarray, items: np.ndarray, day: float) -> np.ndarray:
        """Click logits at position 0, no fatigue: shape [len(users), len(items)]."""
        c = self.config
        palette = self.taste_palette[users][:, :, None] == self.item_palette[items][None, None, :]
        pattern = self.taste_pattern[users][:, :, None] == self.item_pattern[items][None, None, :]
        match = (
            c.palette_weight * palette + c.pattern_weight * pattern + c.combo_weight * (palette & pattern)
            + c.style_weight * (self.taste_style[users][:, :, None] == self.item_style[items][None, None, :])
        ) * self.taste_weight[users][:, :, None]
        affinity = match.max(axis=1)
        return c.base_logit + affinity + self.item_quality[items][None, :] + self.trend_boost(items, day)[None, :]

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
        write_json({"config": dataclasses.asdict(self.config), "trends": self.trends}, directory / "world.json")

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
