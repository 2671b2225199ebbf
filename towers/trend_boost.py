"""The trend boost as part of the model's ranking: chosen on validation, measured by `evaluate`, served.

Serving lifts each user's ANN candidates by ``weight * trend`` (:class:`vistaste.serving.rerank.TrendBoost`,
trend from :class:`vistaste.data.trends.TrendTracker`). On real logs that lift is most of what separates a
good ranking from a stale one (MovieLens-100K: most-popular over the last days beats every model that ignores
time), so it is not left at a hand-picked constant: training chooses the half-life, tag share and weight on
the validation slice, the model card carries them, and evaluation scores the model exactly as serving ranks:
exclude what the seen-item policy hides, keep the ``CANDIDATES`` best by the model, lift them by the trend.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import pandas as pd

from vistaste.data.trends import TrendSetting
from vistaste.towers import metrics
from vistaste.towers.config import CANDIDATES
from vistaste.towers.features import ItemTable

# The grid searched on validation. Weights are multiples of the spread (std) of the model's candidate
# scores, so one grid fits any temperature; the chosen weight is stored in the model's score units.
HALF_LIVES_HOURS = (24.0, 72.0, 168.0)
TAG_SHARES = (0.0, 0.5)
WEIGHT_MULTIPLES = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0)
# Mixed slates tried beside the plain boost (0: every place boosted): the boosted order fills the first 4
# or 6 places of a ranking, the model's own order the rest (TrendSetting.slots).
SLOTS = (0, 4, 6)
# A boost must beat no boost on validation by this share to be taken: smaller gains are noise (on the
# built-in world a 0.3% validation gain cost 1.6% on test).
MIN_RELATIVE_GAIN = 0.01
# The breadth floor (TrainConfig.min_breadth) is measured on the top 10: what a feed's first screen shows.
BREADTH_K = 10
CUT_RESOLUTION = "1D"  # per-user cuts are floored to this when computing trends (see trend_matrix)


def item_tags(table: ItemTable) -> dict[str, list[str]]:
    """{item id: its tags} from the table's multi-hot, as serving reads them from the catalog."""
    vocabulary = np.asarray(table.tag_vocabulary, dtype=object)
    if not len(vocabulary):
        return {}
    return {str(item): list(vocabulary[row > 0]) for item, row in zip(table.ids, table.tags)}


def trend_vector(clicks: pd.DataFrame, now: pd.Timestamp, table: ItemTable, half_life_hours: float, tag_share: float,
                 tags: dict[str, list[str]] | None = None) -> np.ndarray:
    """Every item's trend score in [0, 1] at ``now`` from ``clicks`` (item_id, timestamp) before it, row-aligned with ``table``."""
    tags = item_tags(table) if tags is None else tags
    return TrendSetting(half_life_hours, tag_share).catalog_scores(clicks, now, table.ids, tags)


def trend_matrix(clicks: pd.DataFrame, cuts: pd.DatetimeIndex, table: ItemTable, half_life_hours: float, tag_share: float) -> np.ndarray:
    """[users, items] trend at each user's cut. A global split has one cut; per-user cuts (leave-last) are
    floored to ``CUT_RESOLUTION`` so a few hundred trackers serve thousands of users (the trend then
    ignores at most that much of the user's last hours, and never sees past the cut)."""
    tags = item_tags(table)
    cuts = pd.DatetimeIndex(cuts)
    if cuts.nunique() > 1:
        cuts = cuts.floor(CUT_RESOLUTION)
    out = np.zeros((len(cuts), len(table)))
    for cut in cuts.unique():
        out[np.asarray(cuts == cut)] = trend_vector(clicks[clicks["timestamp"] < cut], cut, table, half_life_hours, tag_share, tags)
    return out


def boosted(scores: np.ndarray, hidden, available: np.ndarray | None, trend: np.ndarray, weight: float,
            n_candidates: int = CANDIDATES, slots: int = 0) -> np.ndarray:
    """Scores ranked as serving ranks them: hidden items -inf; the ``n_candidates`` best remaining per user
    lifted by ``weight * trend``; every other item kept below them in its model order. ``slots`` > 0 (a
    mixed slate, :class:`TrendSetting`): only the ``slots`` best lifted candidates go first, in their
    lifted order, and every other item follows in the model's order. Only the order of the result counts."""
    scores = metrics.exclude(scores, hidden, available)
    if weight == 0:
        return scores
    return _lift(_Candidates.of(scores, n_candidates), trend, weight, slots)


class _Candidates:
    """What boosting needs of the model's ranking, whatever the setting (so :func:`choose` computes it once):
    each user's ``n`` best unseen items (``rows``, their ``scores``) and every item's score pushed below them
    (``below``, model order kept; hidden items -inf)."""

    def __init__(self, rows: np.ndarray, scores: np.ndarray, below: np.ndarray):
        self.rows, self.scores, self.below = rows, scores, below

    @classmethod
    def of(cls, scores: np.ndarray, n_candidates: int) -> "_Candidates":
        n = min(n_candidates, scores.shape[1])
        rows = np.argpartition(-scores, n - 1, axis=1)[:, :n]
        finite = np.isfinite(scores)
        floor = np.where(finite, scores, np.inf).min() if finite.any() else 0.0
        spread = scores[finite].max() - floor if finite.any() else 0.0
        return cls(rows, np.take_along_axis(scores, rows, axis=1), np.where(finite, scores - spread - 1.0, -np.inf))


def _lift(c: _Candidates, trend: np.ndarray, weight: float, slots: int) -> np.ndarray:
    """:func:`boosted`'s ranking from the model's candidates: lifted candidates above the rest (``below``,
    lowered by ``|weight|`` more so no lift reaches it), or a mixed slate's head above everything."""
    trend = np.broadcast_to(trend, c.below.shape)
    lifted = np.where(np.isfinite(c.scores), c.scores + weight * np.take_along_axis(trend, c.rows, axis=1), -np.inf)
    if 0 < slots < lifted.shape[1]:
        lifted = mixed(c.scores, lifted, slots)
    out = c.below - abs(weight)
    np.put_along_axis(out, c.rows, lifted, axis=1)
    return out


def mixed(scores: np.ndarray, lifted: np.ndarray, slots: int) -> np.ndarray:
    """A mixed slate's scores: each row's ``slots`` best by ``lifted`` (-inf: not a candidate) first, in
    that order, above every other item, which keeps its ``scores`` (the model's order; -inf stays hidden)."""
    slots = min(slots, lifted.shape[1])
    head = np.zeros(lifted.shape, dtype=bool)
    np.put_along_axis(head, np.argpartition(-lifted, slots - 1, axis=1)[:, :slots], True, axis=1)
    head &= np.isfinite(lifted)
    finite = np.isfinite(scores)
    top = np.where(finite, scores, -np.inf).max(axis=1, keepdims=True)
    lowest_head = np.where(head, lifted, np.inf).min(axis=1, keepdims=True)
    shift = np.where(np.isfinite(top) & np.isfinite(lowest_head), np.maximum(top - lowest_head, 0.0) + 1.0, 0.0)
    return np.where(head, lifted + shift, scores)


def breadth_floor(s, available: np.ndarray, popularity: np.ndarray, min_breadth: float, k: int = BREADTH_K,
                  tie_ranks: np.ndarray | None = None) -> Callable[[np.ndarray], bool] | None:
    """``allowed`` for :func:`choose`: the ranking's top ``k`` over the slice's users must cover at least
    ``min_breadth`` times the catalog share most-popular's top ``k`` (``popularity``, hidden items excluded
    the same way) covers for the same users. ``min_breadth`` 0: no floor (None)."""
    if min_breadth <= 0:
        return None
    popular = metrics.exclude(np.broadcast_to(popularity.astype(float), (len(s.user_ids), len(popularity))).copy(), s.exclude, available)
    needed = min_breadth * metrics.coverage(metrics.top_k(popular, k, tie_ranks), len(popularity), k)

    def allowed(ranked: np.ndarray) -> bool:
        return metrics.coverage(metrics.top_k(ranked, k, tie_ranks), ranked.shape[1], k) >= needed - 1e-12

    return allowed


def score_spread(scores: np.ndarray) -> float:
    finite = scores[np.isfinite(scores)]
    return float(finite.std()) if finite.size else 0.0


def choose(scores: np.ndarray, s, available: np.ndarray, clicks: pd.DataFrame, cuts: np.ndarray, table: ItemTable,
           metric: Callable[[np.ndarray], float], n_candidates: int = CANDIDATES,
           allowed: Callable[[np.ndarray], bool] | None = None) -> tuple[TrendSetting, list[dict]]:
    """The setting with the best ``metric(ranked scores)`` on a validation slice ``s``; no boost unless one
    beats it by ``MIN_RELATIVE_GAIN`` (ties: the smaller weight). ``allowed(ranked scores)``, if given, must
    hold for a boost to be taken (e.g. a breadth floor, :func:`breadth_floor`). Returns (setting, every
    tried setting with its value, whether it was allowed and whether it was chosen)."""
    base = metrics.exclude(scores, s.exclude, available)
    spread, candidates = score_spread(base), _Candidates.of(base, n_candidates)
    records, best, best_value = [], TrendSetting(weight=0.0), metric(base)
    records.append({**best.to_dict(), "multiple": 0.0, "value": best_value, "allowed": True})
    floor, chosen = best_value * (1 + MIN_RELATIVE_GAIN), 0
    for half_life in HALF_LIVES_HOURS:
        for tag_share in TAG_SHARES:
            trend = trend_matrix(clicks, cuts, table, half_life, tag_share)
            for slots in SLOTS:
                for multiple in WEIGHT_MULTIPLES:
                    if multiple == 0:
                        continue
                    setting = TrendSetting(half_life, tag_share, multiple * spread, slots)
                    ranked = _lift(candidates, trend, setting.weight, slots)  # = boosted(base, ...), its candidates found once
                    value, ok = metric(ranked), allowed is None or bool(allowed(ranked))
                    records.append({**setting.to_dict(), "multiple": multiple, "value": value, "allowed": ok})
                    if ok and value > max(best_value + 1e-12, floor):
                        best, best_value, chosen = setting, value, len(records) - 1
    for i, record in enumerate(records):
        record["chosen"] = i == chosen
    return best, records
