"""The built-in visual world: a catalog of real PNG images and users with hidden tastes who click.

Items vary along *taste* attributes (palette, pattern, style) that users care about and *geometry*
(object shape, layout) that they do not. Users hold hidden mixtures of tastes; each day the active ones
see a slate from a logging policy (random / popular / more-of-the-same) and click with a probability
given by their taste, the item's quality, trends that rise and fall, position bias and fatigue. New
items appear over time. The ground truth is written beside the logs so an oracle ceiling can be scored.

Everything is determined by the seed: each image uses its own generator seeded by (seed, item index),
so images can be rendered in parallel and still be identical between runs.
"""
from __future__ import annotations

import dataclasses
import json
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw
from tqdm.auto import tqdm

from vistaste.data.io import atomic_path, resolve_inside, write_json, write_table, write_vectors

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


# ----------------------------------------------------------------------------------------- images
def render_image(palette: str, pattern: str, style: str, shape: str, layout: str, seed: tuple[int, int], size: int = 224) -> Image.Image:
    """Draw one catalog image: a palette-coloured pattern with an object silhouette on top."""
    rng = np.random.default_rng(list(seed))
    colors = np.array(PALETTES[palette], dtype=np.float32)
    period = STYLE_PERIOD[style] * size / 224 * rng.uniform(0.85, 1.15)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    theta = rng.choice([0.0, np.pi / 4, np.pi / 2, 3 * np.pi / 4]) + rng.normal(0, 0.08)
    along = xx * np.cos(theta) + yy * np.sin(theta) + rng.uniform(0, period * 2)
    across = -xx * np.sin(theta) + yy * np.cos(theta)
    index = np.zeros((size, size), dtype=np.int64)
    if pattern == "stripes":
        index = 1 + (np.floor(along / period).astype(np.int64) % 2)
    elif pattern == "zigzag":
        tri = np.abs(((across / period) % 2.0) - 1.0) * period * 0.8
        index = 1 + (np.floor((along + tri) / period).astype(np.int64) % 2)
    elif pattern == "checks":
        index = 1 + ((np.floor(along / period) + np.floor(across / period)).astype(np.int64) % 2)
    elif pattern in ("dots", "florals"):
        cell = period * 1.6
        cx, cy = (xx % cell) - cell / 2, (yy % cell) - cell / 2
        r, phi = np.hypot(cx, cy), np.arctan2(cy, cx)
        row_parity = (np.floor(yy / cell).astype(np.int64) % 2)
        if pattern == "dots":
            index = np.where(r < cell * 0.3, 1 + row_parity, 0)
        else:
            petals = r < cell * 0.45 * np.abs(np.cos(2.5 * phi + rng.uniform(0, np.pi)))
            index = np.where(r < cell * 0.12, 2, np.where(petals, 1, 0))
    rgb = colors[index]
    if pattern == "gradient":
        t = (along - along.min()) / max(float(np.ptp(along)), 1.0)
        t = np.clip(t + 0.06 * np.sin(across / period * np.pi), 0, 1)[..., None]
        rgb = np.where(t < 0.5, colors[0] + (colors[1] - colors[0]) * (t * 2), colors[1] + (colors[2] - colors[1]) * (t * 2 - 1))
    rgb = np.clip(rgb + rng.normal(0, 5, rgb.shape), 0, 255).astype(np.uint8)
    image = Image.fromarray(rgb, "RGB")

    radius = size * rng.uniform(0.2, 0.26)
    cx, cy = {"center": (0.5, 0.5), "left": (0.32, 0.55), "right": (0.68, 0.55), "top": (0.5, 0.32)}[layout]
    cx, cy = cx * size + rng.normal(0, size * 0.02), cy * size + rng.normal(0, size * 0.02)
    draw = ImageDraw.Draw(image)
    fill, outline, width = (248, 248, 244), (30, 30, 30), max(2, size // 56)
    if shape == "circle":
        draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=fill, outline=outline, width=width)
    elif shape == "square":
        draw.rectangle([cx - radius, cy - radius, cx + radius, cy + radius], fill=fill, outline=outline, width=width)
    else:
        if shape == "triangle":
            angles, radii = np.array([-90, 30, 150]), np.full(3, radius * 1.2)
        elif shape == "diamond":
            angles, radii = np.array([-90, 0, 90, 180]), np.array([1.25, 0.8, 1.25, 0.8]) * radius
        else:  # star
            angles, radii = np.arange(10) * 36 - 90, np.where(np.arange(10) % 2 == 0, 1.25, 0.5) * radius
        points = [(cx + r * np.cos(np.radians(a)), cy + r * np.sin(np.radians(a))) for a, r in zip(angles, radii)]
        draw.polygon(points, fill=fill, outline=outline, width=width)
    return image


def _render_chunk(args) -> int:
    rows, directory, size, seed = args
    for index, palette, pattern, style, shape, layout, rel in rows:
        path = directory / rel
        image = render_image(palette, pattern, style, shape, layout, (seed, index), size)
        with atomic_path(path) as tmp:
            image.save(tmp, format="PNG", compress_level=1)
    return len(rows)


# ------------------------------------------------------------------------------------ generation
def _make_truth(config: WorldConfig, rng: np.random.Generator) -> GroundTruth:
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


def _simulate_logs(truth: GroundTruth, rng: np.random.Generator) -> pd.DataFrame:
    """Run the logging policy and the users' click model day by day."""
    c = truth.config
    n, m = len(truth.item_ids), len(truth.user_ids)
    activity = rng.beta(2.0, 3.0, m)
    # Most users are there at launch; the rest sign up over time (new users without history).
    signup_day = np.where(rng.random(m) < c.launch_share, 0, rng.integers(1, max(c.days, 2), m))
    clicks_by_item = np.zeros((c.days, n), dtype=np.int32)
    clicked: set[int] = set()
    # The logging policy's "more like this" (a content-based recommender): items with the palette and
    # pattern of one of the user's last three clicks.
    recent_combos = np.full((m, 3), -1)
    item_combo = truth.item_palette * len(PATTERNS) + truth.item_pattern
    n_combos = len(PALETTES) * len(PATTERNS)
    events: list[tuple[int, int, int, str, int]] = []  # (user row, item row, seconds since START, event, position)
    for day in range(c.days):
        available = np.flatnonzero(truth.item_created_day <= day)
        recent = clicks_by_item[max(0, day - 7):day].sum(axis=0)[available] + 1.0
        popular_pool = rng.choice(available, size=4 * c.slate_size * 64, p=recent / recent.sum())
        order = available[np.argsort(item_combo[available], kind="stable")]
        by_combo = np.split(order, np.searchsorted(item_combo[order], np.arange(1, n_combos)))
        active = np.flatnonzero((rng.random(m) < activity) & (signup_day <= day))
        day_start = day * 86_400
        session_seconds = rng.integers(0, 86_000, len(active))
        for user, second in zip(active, session_seconds):
            k = c.slate_size
            combos = recent_combos[user][recent_combos[user] >= 0]
            n_pop, n_like = int(k * 0.2), int(k * 0.3) if len(combos) else 0
            parts = [rng.choice(popular_pool, n_pop), rng.choice(available, k * 2)]
            if n_like:
                pool = by_combo[rng.choice(combos)]
                if len(pool):
                    parts.insert(1, rng.choice(pool, n_like))
            candidates = np.concatenate(parts)
            _, first = np.unique(candidates, return_index=True)
            slate = candidates[np.sort(first)][:k]
            slate = slate[rng.permutation(len(slate))]
            p = truth.click_probability(np.array([user]), slate, day + second / 86_400)[0]
            p = p / (1.0 + np.arange(len(slate))) ** c.position_decay
            p = np.where([(user * n + i) in clicked for i in slate], p * c.fatigue, p)
            is_click = rng.random(len(slate)) < p
            is_save = is_click & (rng.random(len(slate)) < c.save_rate)
            for pos, item in enumerate(slate):
                t = day_start + int(second) + pos
                events.append((user, item, t, "impression", pos))
                if is_click[pos]:
                    events.append((user, item, t + 3, "click", pos))
                    clicks_by_item[day, item] += 1
                    clicked.add(user * n + item)
                    recent_combos[user] = np.r_[recent_combos[user][1:], item_combo[item]]
                if is_save[pos]:
                    events.append((user, item, t + 9, "save", pos))
    users, items, seconds, kinds, positions = zip(*events) if events else ((), (), (), (), ())
    logs = pd.DataFrame(
        {
            "user_id": truth.user_ids[np.array(users, dtype=np.int64)],
            "item_id": truth.item_ids[np.array(items, dtype=np.int64)],
            "timestamp": START + pd.to_timedelta(np.array(seconds, dtype=np.int64), unit="s"),
            "event": list(kinds),
            "position": np.array(positions, dtype=float),
        }
    )
    return logs.sort_values(["timestamp", "user_id"], kind="stable").reset_index(drop=True)


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


def contact_sheet(catalog: pd.DataFrame, attributes: pd.DataFrame, directory: Path, thumb: int = 72) -> Image.Image:
    """A grid of sample images: one row per pattern, one column per palette."""
    merged = catalog.merge(attributes, on="item_id")
    label_w, label_h = 70, 16
    sheet = Image.new("RGB", (label_w + thumb * len(PALETTES), label_h + thumb * len(PATTERNS)), "white")
    draw = ImageDraw.Draw(sheet)
    for col, palette in enumerate(PALETTE_NAMES):
        draw.text((label_w + col * thumb + 4, 2), palette, fill="black")
    for row, pattern in enumerate(PATTERNS):
        draw.text((4, label_h + row * thumb + thumb // 2 - 6), pattern, fill="black")
        for col, palette in enumerate(PALETTE_NAMES):
            match = merged[(merged["pattern"] == pattern) & (merged["palette"] == palette)]
            if len(match) and match["image_path"].iloc[0]:
                with Image.open(resolve_inside(directory, match["image_path"].iloc[0])) as img:
                    sheet.paste(img.convert("RGB").resize((thumb, thumb)), (label_w + col * thumb, label_h + row * thumb))
    return sheet


def world_summary(logs: pd.DataFrame, catalog: pd.DataFrame, days: int) -> dict:
    impressions = int((logs["event"] == "impression").sum())
    clicks = int((logs["event"] == "click").sum())
    day = ((logs["timestamp"] - START).dt.days).clip(0, days - 1)
    per_day = logs.assign(day=day).pivot_table(index="day", columns="event", values="user_id", aggfunc="count", fill_value=0)
    return {
        "items": len(catalog),
        "users": int(logs["user_id"].nunique()),
        "events": len(logs),
        "impressions": impressions,
        "clicks": clicks,
        "saves": int((logs["event"] == "save").sum()),
        "ctr": clicks / max(impressions, 1),
        "events_per_day": per_day.to_dict(orient="index"),
    }


def generate_world(directory: str | Path, config: WorldConfig = WorldConfig(), workers: int = 2, progress: bool = True) -> dict:
    """Generate a world into ``directory``; return its summary (also written to ``summary.json``).

    Writes ``catalog.parquet``, ``interactions.parquet``, ``users.parquet``, ``images/*.png`` (or
    ``item_vectors.parquet`` with ``images=False``), ``ground_truth/`` and ``contact_sheet.png``.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(config.seed)
    truth = _make_truth(config, rng)
    shapes, layouts = truth.item_shape, truth.item_layout
    created_at = START + pd.to_timedelta(truth.item_created_day, unit="D")  # live from midnight of that day
    catalog = pd.DataFrame(
        {
            "item_id": truth.item_ids,
            "image_path": [f"images/{i}.png" for i in truth.item_ids] if config.images else [None] * config.items,
            # Tags are partial and noisy on purpose, like real catalogs: the pixels carry the rest.
            "tags": [
                " ".join(t for t, keep in ((f"palette:{PALETTE_NAMES[p]}", k1), (f"shape:{SHAPES[s]}", True)) if keep)
                for p, s, k1 in zip(truth.item_palette, shapes, rng.random(config.items) < 0.5)
            ],
            "created_at": created_at,
        }
    )
    logs = _simulate_logs(truth, rng)

    if config.images:
        rows = [
            (k, PALETTE_NAMES[truth.item_palette[k]], PATTERNS[truth.item_pattern[k]], STYLES[truth.item_style[k]], SHAPES[shapes[k]], LAYOUTS[layouts[k]], catalog["image_path"].iloc[k])
            for k in range(config.items)
        ]
        (directory / "images").mkdir(exist_ok=True)
        chunks = [(rows[i:i + 64], directory, config.image_size, config.seed) for i in range(0, len(rows), 64)]
        with tqdm(total=len(rows), desc="images", unit="img", disable=not progress) as bar:
            if workers > 1:
                with ProcessPoolExecutor(workers) as pool:
                    for done in pool.map(_render_chunk, chunks):
                        bar.update(done)
            else:
                for chunk in chunks:
                    bar.update(_render_chunk(chunk))
    else:
        vectors = item_feature_vectors(truth, config.seed)
        write_vectors(directory / "item_vectors.parquet", truth.item_ids, vectors)

    write_table(catalog, directory / "catalog.parquet")
    write_table(logs, directory / "interactions.parquet")
    write_table(pd.DataFrame({"user_id": truth.user_ids}), directory / "users.parquet")
    truth.save(directory / "ground_truth")
    attributes = pd.DataFrame({"item_id": truth.item_ids, "palette": np.array(PALETTE_NAMES)[truth.item_palette],
                               "pattern": np.array(PATTERNS)[truth.item_pattern], "shape": np.array(SHAPES)[shapes]})
    if config.images:
        with atomic_path(directory / "contact_sheet.png") as tmp:
            contact_sheet(catalog, attributes, directory).save(tmp, format="PNG")
    summary = world_summary(logs, catalog, config.days)
    summary["cold_items"] = int((truth.item_created_day > 0).sum())
    summary["trends"] = truth.trends
    write_json(summary, directory / "summary.json")
    return summary
