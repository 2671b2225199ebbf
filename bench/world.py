"""The built-in visual world: a catalog of real PNG images and users with hidden tastes who click.

Items vary along *taste* attributes (palette, pattern, style) that users care about and *geometry*
(object shape, layout) that they do not. Users hold hidden mixtures of tastes; each day the active ones
see a slate from a logging policy (random / popular / more-of-the-same) and click with a probability
given by their taste, the item's quality, trends that rise and fall, position bias and fatigue. New
items appear over time. Users also tire of tastes, leave monotonous slates, follow trends and come back
when satisfied (on by default; ``WorldConfig.without_behaviours`` turns them off and gives the world made
before them); these live in :class:`~vistaste.bench.users.UserState`, the click model this logging
policy shares with the online simulator. The
ground truth is written beside the logs so an oracle ceiling can be scored.

Everything is determined by the seed: each image uses its own generator seeded by (seed, item index),
so images can be rendered in parallel and still be identical between runs.
"""
from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from vistaste.bench.render import _render_chunk, contact_sheet, render_image
from vistaste.bench.truth import GroundTruth, item_feature_vectors, make_truth, oracle_scorers
from vistaste.bench.users import UserState
from vistaste.bench.world_config import (
    LAYOUTS,
    PALETTE_NAMES,
    PALETTES,
    PATTERNS,
    SESSION_START_LIMIT_S,
    SHAPES,
    START,
    STYLES,
    WorldConfig,
)
from vistaste.data.io import atomic_path, write_json, write_table, write_vectors

# The world's parts live in world_config.py (settings), truth.py (hidden click model), users.py (users with state) and
# render.py (pictures); these names stay importable here.
__all__ = ["GroundTruth", "LAYOUTS", "PALETTES", "PALETTE_NAMES", "PATTERNS", "SHAPES", "START", "STYLES", "WorldConfig",
           "contact_sheet", "generate_world", "item_feature_vectors", "oracle_scorers", "render_image", "world_summary"]


# ----------------------------------------------------------------------------------- logging policy
def _simulate_logs(truth: GroundTruth, rng: np.random.Generator) -> pd.DataFrame:
    """Run the logging policy and the users' click model (:class:`UserState`) day by day."""
    c = truth.config
    state = UserState(truth)
    # Dice for the behaviours come from their own stream, drawn only when one is on: the main stream (and so
    # a world without behaviours) is the one made before them.
    behaviour_rng = np.random.default_rng([c.seed, 13])
    n, m = len(truth.item_ids), len(truth.user_ids)
    activity = rng.beta(2.0, 3.0, m)
    # Most users are there at launch; the rest sign up over time (new users without history).
    signup_day = np.where(rng.random(m) < c.launch_share, 0, rng.integers(1, max(c.days, 2), m))
    clicks_by_item = np.zeros((c.days, n), dtype=np.int32)
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
        if c.return_sensitivity:
            active = active[state.visits(active, behaviour_rng.random(len(active)))]
        day_start = day * 86_400
        session_seconds = rng.integers(0, SESSION_START_LIMIT_S, len(active))
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
            dice = rng.random(len(slate))[None, :]
            stop_dice = behaviour_rng.random(len(slate))[None, :] if c.boredom else None
            response = state.respond(np.array([user]), slate[None, :], day + second / 86_400, dice, stop_dice)
            is_click = response.clicks[0]
            is_save = is_click & (rng.random(len(slate)) < c.save_rate)
            for pos in np.flatnonzero(response.examined[0]):  # what the user looked at (all of it unless bored)
                item = slate[pos]
                t = day_start + int(second) + int(pos)
                events.append((user, item, t, "impression", pos))
                if is_click[pos]:
                    events.append((user, item, t + 3, "click", pos))
                    clicks_by_item[day, item] += 1
                    recent_combos[user] = np.r_[recent_combos[user][1:], item_combo[item]]
                if is_save[pos]:
                    events.append((user, item, t + 9, "save", pos))
        state.end_day()
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
    truth = make_truth(config, rng)
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
            (k, PALETTE_NAMES[truth.item_palette[k]], PATTERNS[truth.item_pattern[k]], STYLES[truth.item_style[k]], SHAPES[shapes[k]],
             LAYOUTS[layouts[k]], catalog["image_path"].iloc[k])
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
    if any(config.behaviours.values()):  # absent otherwise: a world without behaviours writes the same summary as before them
        summary["behaviours"] = config.behaviours
    write_json(summary, directory / "summary.json")
    return summary
