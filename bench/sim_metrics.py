"""The simulator's figures: one arm's day from its slates and clicks (:func:`day_metrics`, with
:func:`slate_diversity` and :func:`slate_change`), and over seeds :func:`summarise`, which turns per-day
records into per-arm means with 95% t intervals over seeds (:func:`t_interval`).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from vistaste.bench.sim_config import ARMS
from vistaste.towers.features import PAD


def slate_diversity(unit_vectors: np.ndarray) -> float:
    """1 - the mean cosine over the slate's distinct pairs (rows are unit vectors; needs two or more)."""
    return float(1 - (unit_vectors @ unit_vectors.T)[np.triu_indices(len(unit_vectors), 1)].mean())


def slate_change(unit_vectors: np.ndarray, previous: np.ndarray) -> float:
    """Temporal diversity: 1 - the mean cosine between every item of today's slate and yesterday's."""
    return float(1 - (unit_vectors @ previous.T).mean())


def day_metrics(slates: np.ndarray, examined: np.ndarray, clicks: np.ndarray, unit_vectors: np.ndarray, created_day: np.ndarray,
                cold_from_day: int, n_available: int) -> dict:
    """One arm's day. ``slates`` [users, k] item rows (PAD: an empty place), ``examined`` and ``clicks``
    [users, k] bool, ``unit_vectors`` by item row, ``created_day`` by item row: items created on or after
    ``cold_from_day`` are cold. CTR is clicks per examined impression, coverage the share of the
    ``n_available`` items shown to anyone, diversity :func:`slate_diversity` averaged over slates of two or
    more items, cold_click_share the share of clicks on cold items."""
    shown = slates[slates != PAD]
    impressions, n_clicks = int(examined.sum()), int(clicks.sum())
    cold = created_day[slates[clicks]] >= cold_from_day
    diversity = [slate_diversity(unit_vectors[r]) for r in (row[row != PAD] for row in slates) if len(r) > 1]
    return {"impressions": impressions, "clicks": n_clicks, "ctr": n_clicks / impressions if impressions else 0.0,
            "clicks_per_user": n_clicks / max(len(slates), 1), "coverage": float(len(np.unique(shown)) / n_available),
            "diversity": float(np.mean(diversity)) if diversity else 0.0, "cold_click_share": float(cold.mean()) if len(cold) else 0.0,
            "cold_clicks": int(cold.sum())}


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
