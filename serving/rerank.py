"""Re-ranking ANN candidates into the final slate: one default pipeline of small composable stages.

Each stage maps a :class:`~vistaste.serving.rerank_stages.Candidates` (row-aligned ids, vectors, relevance,
reasons) to another, so the id and its vector always travel together. The stages are in
:mod:`vistaste.serving.rerank_stages` and :mod:`vistaste.serving.adaptive`; here, the pipeline that chains
them, the re-ranking methods and their defaults. Everything is deterministic given its inputs (ties are
broken by the incoming order).
"""
from __future__ import annotations

import dataclasses
from typing import Iterable, Literal, get_args

from vistaste.serving.adaptive import AdaptiveDPP, UserBehaviour
from vistaste.serving.rerank_stages import DPP, MMR, Candidates, ExcludeSeen, Stage, TopK, TrendBoost
from vistaste.towers.config import CANDIDATES


@dataclasses.dataclass
class Pipeline:
    stages: list[Stage]

    def __call__(self, candidates: Candidates) -> Candidates:
        for stage in self.stages:
            candidates = stage(candidates)
        return candidates


# Measured on the built-in world, diversifying over image vectors (benchmarks/rerank_tradeoff.py, 4,000
# users, 2,101 scored on the test days; each list's diversity against recall of the same list). DPP 0.9
# with a 10-item window (a screen): first screen +12% diversity for -5% recall@10, whole 50-item slate
# +3% for -0.7%; 0.75: slate +8% for -4%. No setting reaches +25% for <= 5% on either list; a Gaussian
# kernel (bandwidth 0.5) and MMR trace the same frontier. Online (`vistaste simulate`, 3 seeds): window
# DPP 0.9 kept CTR (0.113 vs 0.112) at +10% diversity; 0.8 cost 4% CTR (within the interval) at +17%;
# MMR 0.5 lost 18% CTR at +29%.
DPP_WINDOW = 10
# Every re-ranking method, in one place: the HTTP API's `method`, the CLI's `--method` and `SlateServer.recommend`
# accept these and nothing else (METHODS: the same list as a tuple, for checks and help). The service setting
# `diversity` (serving/settings.py) still spells the list out in its pattern; tests/test_serving.py checks they agree.
Method = Literal["adaptive", "dpp", "mmr", "none"]
METHODS: tuple[str, ...] = get_args(Method)
# The serving default: the adaptive window DPP (AdaptiveDPP; its settings chosen on validation runs). Reported
# on other runs (benchmarks/longrun.py: world seed 0, simulation seeds 0-4, 28 days, 400 users; 95% t
# intervals paired by seed; docs/diversity.md): clicks per user against plain two-tower +7.5% [+2.0, +13.0]
# with satiation and boredom on, users returning on the last day +1.0 point [-0.1, +2.1]; behaviours off
# +0.8% [-3.3, +4.9] (users who read whole slates get θ 0.9, the previous default: the same slates); at half
# the strengths +3.6% [-0.3, +7.6]. A client that logs every served item as an impression gets DPP 0.9.
DEFAULT_METHOD: Method = "adaptive"
# What each method does, for the CLI help and the OpenAPI document (measurements: docs/diversity.md).
METHOD_HELP = {
    "adaptive": "window DPP whose diversity rises per user as they leave slates early (read from their logged viewable "
                "impressions); users who read whole slates get the dpp slates. The default: +7.5% clicks per user over 28 "
                "simulated days with users who tire, +0.8% without",
    "dpp": "sliding-window DPP (window 10), one trade-off for everyone (default 0.9, nearly the relevance order; 0.7 to "
           "turn diversity up when impressions are not logged but users tire of a look)",
    "mmr": "maximal marginal relevance (default λ 0.5): more diverse than DPP 0.9; strongest in the 28-day simulation "
           "but not validated, and λ 0.3 lost clicks",
    "none": "relevance order (trend boost included), no diversity: for search-like or buy-again lists and slates of 3 or fewer",
}
DEFAULT_TRADE_OFF = {"mmr": MMR.trade_off, "dpp": DPP.trade_off, "adaptive": AdaptiveDPP.engaged}
ADAPTIVE = {"bored": AdaptiveDPP.bored, "full_exit": AdaptiveDPP.full_exit, "taste_step": AdaptiveDPP.taste_step}
DEFAULT_TREND_WEIGHT = TrendBoost.weight  # relevance += weight * trend, trend in [0, 1]
# ANN candidates per query handed to the re-ranker: the slate is chosen among these (after exclusions).
# One number for training's evaluation and serving, so it lives with the training config.
DEFAULT_CANDIDATES = CANDIDATES


def check_method(method: str) -> None:
    """ValueError unless ``method`` is one of :data:`METHODS`."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")


def default_pipeline(k: int, seen: Iterable[str] = (), trend_scores: dict[str, float] | None = None, method: Method = DEFAULT_METHOD,
                     trade_off: float | None = None, trend_weight: float = DEFAULT_TREND_WEIGHT,
                     behaviour: UserBehaviour | None = None, adaptive: dict | None = None, trend_slots: int = 0) -> Pipeline:
    """The one place the serving slate is configured: exclude seen -> trend boost -> diversify to k.

    ``trade_off`` None takes the method's default from ``DEFAULT_TRADE_OFF`` (for "adaptive": the engaged
    user's θ; one below the bored users' θ is every user's). ``trend_slots``: the boosted places of a mixed
    slate (:class:`~vistaste.serving.rerank_stages.TrendBoost`; 0, every place). ``behaviour``: the user's, for "adaptive"
    (None: an engaged user); ``adaptive`` overrides :class:`AdaptiveDPP`'s other settings (default ``ADAPTIVE``).
    """
    check_method(method)
    stages = [ExcludeSeen(seen)]
    if trend_scores:
        stages.append(TrendBoost(trend_scores, trend_weight, trend_slots))
    if method == "none":
        stages.append(TopK(k))
    else:
        trade_off = DEFAULT_TRADE_OFF[method] if trade_off is None else trade_off
        if method == "adaptive":
            settings = {**ADAPTIVE, **(adaptive or {})}
            # A trade-off asked below the bored users' θ leaves no room to adapt: every user gets it.
            settings["bored"] = min(settings["bored"], trade_off)
            stages.append(AdaptiveDPP(k, behaviour or UserBehaviour(), trade_off, window=DPP_WINDOW, **settings))
        else:
            stages.append(DPP(k, trade_off, window=DPP_WINDOW) if method == "dpp" else MMR(k, trade_off))
    return Pipeline(stages)
