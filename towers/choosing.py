"""What training chooses on the validation slice once the towers are fitted, and how it scores them there:
the trend boost (:func:`choose_trend_boost`), the collaborative term's weight (:func:`choose_collaborative`),
and that term at a *given* weight where no validation slice exists (:func:`collaborative_at`, the simulator's
daily retrains). :func:`vistaste.towers.training.train` calls the first two after early stopping.
"""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from vistaste.towers import metrics
from vistaste.towers.collaborative import BETAS as COLLABORATIVE_BETAS
from vistaste.towers.collaborative import Collaborative, spread_ratio
from vistaste.towers.config import VALIDATION_METRIC
from vistaste.towers.features import latest_histories, positives
from vistaste.towers.slices import Slice, positive_rows
from vistaste.towers.trend_boost import MIN_RELATIVE_GAIN, breadth_floor
from vistaste.towers.trend_boost import choose as choose_trend

if TYPE_CHECKING:
    from vistaste.towers.trained import TrainedTwoTower


def slice_scores(trained: TrainedTwoTower, s: Slice) -> np.ndarray:
    """The model's scores ``[users, items]`` for a slice's users: towers and collaborative term, as served."""
    return trained.user_vectors(s.user_ids, s.history_rows, s.histories) @ trained.item_vectors().T


def validation_scores(trained: TrainedTwoTower, s: Slice, available: np.ndarray, k: int = 50) -> dict[str, float]:
    """recall@k and nDCG@k on a validation slice, under the same exclusion as evaluation."""
    top = metrics.top_k(metrics.exclude(slice_scores(trained, s), s.exclude, available), k)
    return {f"recall@{k}": metrics.recall(top, s.relevant, k), f"ndcg@{k}": metrics.ndcg(top, s.relevant, k)}


def choose_trend_boost(trained: TrainedTwoTower, val_slice: Slice, available: np.ndarray, train_logs: pd.DataFrame, k: int = 50) -> dict:
    """The trend boost that ranks the validation slice best (by ``VALIDATION_METRIC``) within the breadth
    floor (``config.min_breadth``), with the grid tried."""
    scores = slice_scores(trained, val_slice)

    def value(ranked: np.ndarray) -> float:
        return metrics.ndcg(metrics.top_k(ranked, k), val_slice.relevant, k)

    min_breadth = trained.config.min_breadth
    popularity = np.bincount(positive_rows(train_logs, trained.table)["row"].to_numpy(), minlength=len(trained.table))
    setting, tried = choose_trend(scores, val_slice, available, positives(train_logs), val_slice.cuts, trained.table, value,
                                  allowed=breadth_floor(val_slice, available, popularity, min_breadth))
    floor = f" with top-10 coverage >= {min_breadth:g}x most-popular's" if min_breadth > 0 else ""
    return {**setting.to_dict(), "chosen_by": f"validation {VALIDATION_METRIC}{floor}", "validation": tried}


def choose_collaborative(trained: TrainedTwoTower, val_slice: Slice, available: np.ndarray, train_logs: pd.DataFrame,
                         k: int = 50) -> tuple[Collaborative | None, dict]:
    """ALS fitted on ``train_logs`` and the weight (``BETAS`` x the spread ratio) that ranks the validation
    slice best by ``VALIDATION_METRIC`` beside the towers; None unless one beats the towers alone by
    ``MIN_RELATIVE_GAIN`` (as the trend boost must). Returns (term or None, the record for the model card)."""
    fitted = Collaborative.fit(positive_rows(train_logs, trained.table), trained.table, seed=trained.config.seed)
    towers = metrics.exclude(trained.user_vectors(val_slice.user_ids, val_slice.history_rows) @ trained.item_vectors().T,
                             val_slice.exclude, available)
    als = metrics.exclude(fitted.user_factors(val_slice.histories) @ fitted.item_factors.T, val_slice.exclude, available)
    ratio = spread_ratio(towers, als)
    tried = []
    for beta in COLLABORATIVE_BETAS:
        blended = np.where(np.isfinite(towers), towers + beta * ratio * np.nan_to_num(als, neginf=0.0), -np.inf)
        tried.append({"beta": beta, "gamma": beta * ratio,
                      "value": metrics.ndcg(metrics.top_k(blended, k), val_slice.relevant, k)})
    best = max(tried, key=lambda r: r["value"])
    if best["beta"] == 0 or best["value"] <= tried[0]["value"] * (1 + MIN_RELATIVE_GAIN):
        best = tried[0]
    for record in tried:
        record["chosen"] = record is best
    record = {"beta": best["beta"], "gamma": best["gamma"], "factors": fitted.factors, "regularization": fitted.regularization,
              "alpha": fitted.alpha, "chosen_by": f"validation {VALIDATION_METRIC}", "validation": tried}
    return (dataclasses.replace(fitted, gamma=best["gamma"]) if best["beta"] > 0 else None), record


def collaborative_at(trained: TrainedTwoTower, logs: pd.DataFrame, beta: float, users: int = 500, seed: int = 0) -> Collaborative | None:
    """The collaborative term for ``trained`` at a *given* ``beta`` (no validation slice to choose it on, as in
    the simulator): ALS on ``logs``, gamma = beta x the spread ratio of the two scores over up to ``users`` of
    the log's users (their consumed items excluded), as :func:`choose_collaborative` measures it on validation.
    None when ``beta`` is 0."""
    if beta <= 0:
        return None
    rows = positive_rows(logs, trained.table)
    fitted = Collaborative.fit(rows, trained.table, seed=seed)
    by_user = rows.groupby("user_id", sort=True)["row"].agg(lambda r: r.to_numpy())
    pick = np.random.default_rng(seed).permutation(len(by_user))[:users]
    user_ids, consumed = by_user.index.to_numpy()[pick], list(by_user.to_numpy()[pick])
    history = latest_histories(rows, rows["row"].to_numpy(), user_ids, trained.config.history_length)
    d = trained.config.output_dim
    towers = trained.user_vectors(user_ids, history)[:, :d] @ trained.item_vectors()[:, :d].T
    als = fitted.user_factors(consumed) @ fitted.item_factors.T
    for u, items in enumerate(consumed):
        towers[u, items] = als[u, items] = -np.inf
    return dataclasses.replace(fitted, gamma=beta * spread_ratio(towers, als))
