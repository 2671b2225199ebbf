"""Re-ranking ANN candidates into the final slate: small composable stages, one default pipeline.

Each stage maps a :class:`Candidates` (row-aligned ids, vectors, relevance, reasons) to another, so
the id and its vector always travel together. Everything is deterministic given its inputs (ties are
broken by the incoming order).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Iterable, Literal, Protocol, get_args

import numpy as np
import pandas as pd

from vistaste.data.vectors import unit_rows
from vistaste.towers.config import CANDIDATES


@dataclasses.dataclass
class Candidates:
    """``ids[n]``, unit ``vectors[n, d]``, ``relevance[n]`` (higher is better), and per-item notes."""

    ids: np.ndarray
    vectors: np.ndarray
    relevance: np.ndarray
    trend: np.ndarray | None = None
    diversity_gain: np.ndarray | None = None

    def __post_init__(self):
        n = len(self.ids)
        if len(self.vectors) != n or len(self.relevance) != n:
            raise ValueError(f"ids, vectors and relevance must align, got {n}, {len(self.vectors)}, {len(self.relevance)}")
        self.trend = np.zeros(n) if self.trend is None else self.trend
        self.diversity_gain = np.full(n, np.nan) if self.diversity_gain is None else self.diversity_gain

    def take(self, rows) -> "Candidates":
        rows = np.asarray(rows, dtype=np.int64)
        return Candidates(self.ids[rows], self.vectors[rows], self.relevance[rows], self.trend[rows], self.diversity_gain[rows])

    def __len__(self) -> int:
        return len(self.ids)


class Stage(Protocol):
    """What a :class:`Pipeline` chains: candidates in, candidates out (ids and vectors kept together)."""

    def __call__(self, candidates: Candidates) -> Candidates: ...


@dataclasses.dataclass
class ExcludeSeen:
    """Drop items the user already clicked or was recently shown."""

    seen: Iterable[str]

    def __call__(self, candidates: Candidates) -> Candidates:
        seen = set(self.seen)
        return candidates.take([i for i, item in enumerate(candidates.ids) if item not in seen])


@dataclasses.dataclass
class TrendBoost:
    """relevance += weight * trend, where trend is in [0, 1] per item (from :class:`vistaste.data.trends.TrendTracker`)."""

    scores: dict[str, float]
    weight: float = 0.1  # used where no model chose one (the simulator's trend arm); serving uses the model card's

    def __call__(self, candidates: Candidates) -> Candidates:
        trend = np.array([self.scores.get(item, 0.0) for item in candidates.ids])
        out = candidates.take(np.arange(len(candidates)))
        out.trend = trend
        out.relevance = candidates.relevance + self.weight * trend
        return out


def _scaled_relevance(relevance: np.ndarray) -> np.ndarray:
    """Min-max scale to [0, 1], so a trade-off means the same for any score scale (all equal -> ones)."""
    spread = relevance.max() - relevance.min()
    return (relevance - relevance.min()) / spread if spread > 0 else np.ones(len(relevance))


def _validate_k_lambda(k: int, trade_off: float) -> None:
    if k <= 0:
        raise ValueError(f"k must be positive, got {k}")
    if not 0.0 <= trade_off <= 1.0:
        raise ValueError(f"trade-off must be in [0, 1], got {trade_off}")


@dataclasses.dataclass
class MMR:
    """Maximal marginal relevance (Carbonell & Goldstein 1998): greedily pick
    argmax  λ·relevance − (1 − λ)·max cosine to the already picked. λ = 1 is the relevance order.

    Relevance is min-max scaled to [0, 1] first so λ means the same for any score scale; similarity
    is the cosine of the item vectors.
    """

    k: int
    trade_off: float = 0.5

    def __post_init__(self):
        _validate_k_lambda(self.k, self.trade_off)

    def __call__(self, candidates: Candidates) -> Candidates:
        n = len(candidates)
        if n == 0:
            return candidates
        scaled = _scaled_relevance(candidates.relevance)
        unit = unit_rows(candidates.vectors)
        sims = unit @ unit.T
        picked, max_sim = [], np.full(n, -np.inf)
        gains = np.full(n, np.nan)
        available = np.ones(n, bool)
        for _ in range(min(self.k, n)):
            redundancy = np.where(np.isfinite(max_sim), max_sim, 0.0)
            value = np.where(available, self.trade_off * scaled - (1 - self.trade_off) * redundancy, -np.inf)
            best = int(np.argmax(value))  # first maximum: ties keep the incoming order
            picked.append(best)
            gains[best] = 1.0 - redundancy[best]
            available[best] = False
            max_sim = np.maximum(max_sim, sims[best])
        out = candidates.take(picked)
        out.diversity_gain = gains[picked]
        return out


@dataclasses.dataclass
class DPP:
    """Fast greedy MAP inference for a DPP (Chen, Zhang & Zhou, NeurIPS 2018).

    Kernel L = diag(q) S diag(q) with S the cosine similarity of item vectors and quality
    q = exp(α·relevance), α = θ / (2(1 − θ)) (the paper's trade-off): θ → 1 follows relevance, θ → 0
    maximises diversity.

    Computed in log space, so every θ in [0, 1] is stable (q itself overflows float64 from θ ≈ 0.997):
    since log det L_Y = 2α·Σ_Y relevance + log det S_Y, the greedy step picks the item maximising
    θ·relevance_i + (1 − θ)·log c_i, where c_i is its conditional variance under S given the picks
    (the paper's Eq. 11 form; it is (1 − θ)·log of the gain in L, so the order is the same). An item with
    c_i < ``epsilon`` is spanned by the picks (an exact duplicate, say): it is never picked, at any
    θ < 1, and when only such items remain the slate ends early. θ = 1 drops the diversity term: the
    plain relevance order, duplicates included (as MMR at λ = 1).

    ``window`` (the paper's sliding-window variant): each pick need only be diverse from the previous
    ``window − 1`` picks, as a feed is seen a screen at a time; a long slate then keeps more of its
    relevance. Near-identical images (cosine ≥ ``duplicate_cosine``) are still never picked twice.

    ``bandwidth`` σ swaps the cosine for a Gaussian kernel S = exp(−‖x − y‖² / 2σ²) = exp(−(1 − cos) / σ²)
    on the unit vectors (YouTube's DPP, Wilhelm et al., CIKM 2018). A narrow kernel lets only look-alikes
    repel: the slate keeps the user's taste but varies everything else about the pictures.

    ``diversity_gain`` of each pick is sqrt(c_i): 1 for an item orthogonal to what came before, 0 for a copy.
    """

    k: int
    trade_off: float = 0.9
    window: int | None = None
    bandwidth: float | None = None
    epsilon: float = 1e-10
    duplicate_cosine: float = 0.999

    def __post_init__(self):
        _validate_k_lambda(self.k, self.trade_off)
        if self.window is not None and self.window < 2:
            raise ValueError(f"window must be at least 2 (or None for the whole slate), got {self.window}")
        if self.bandwidth is not None and not self.bandwidth > 0:
            raise ValueError(f"bandwidth must be positive (or None for the cosine kernel), got {self.bandwidth}")

    def __call__(self, candidates: Candidates) -> Candidates:
        n = len(candidates)
        if n == 0:
            return candidates
        scaled = _scaled_relevance(candidates.relevance)
        if self.trade_off >= 1.0:
            order = np.argsort(-scaled, kind="stable")[: self.k]
            return candidates.take(order)
        unit = unit_rows(candidates.vectors)
        cosine = unit @ unit.T
        similarity = cosine if self.bandwidth is None else np.exp((cosine - 1.0) / self.bandwidth**2)
        if self.window is None or self.window >= min(self.k, n):
            picked, variances = self._greedy(similarity, scaled, min(self.k, n))
        else:
            picked, variances = self._greedy_windowed(similarity, cosine, scaled, min(self.k, n))
        out = candidates.take(picked)
        out.diversity_gain = np.sqrt(variances)
        return out

    def _objective(self, scaled: np.ndarray, variance: np.ndarray) -> np.ndarray:
        """θ·relevance + (1 − θ)·log(conditional variance); −inf where the variance is below ``epsilon``."""
        log_variance = np.log(np.maximum(variance, self.epsilon))  # clipped first: no log(0) warning
        return np.where(variance >= self.epsilon, self.trade_off * scaled + (1.0 - self.trade_off) * log_variance, -np.inf)

    def _greedy(self, similarity: np.ndarray, scaled: np.ndarray, steps: int) -> tuple[list[int], np.ndarray]:
        """Whole-slate greedy MAP with incremental Cholesky rows of S (the paper's Algorithm 1)."""
        n = len(similarity)
        variance = np.diag(similarity).copy()
        cis = np.zeros((steps, n))
        picked, variances, taken = [], [], np.zeros(n, bool)
        for step in range(steps):
            value = np.where(taken, -np.inf, self._objective(scaled, variance))
            best = int(np.argmax(value))  # first maximum: ties keep the incoming order
            if value[best] == -np.inf:
                break  # every remaining item is (numerically) spanned by the picked ones
            picked.append(best)
            variances.append(variance[best])
            taken[best] = True
            eis = (similarity[best] - cis[:step].T @ cis[:step, best]) / math.sqrt(variance[best])
            cis[step] = eis
            variance = variance - eis**2
        return picked, np.array(variances)

    def _greedy_windowed(self, similarity: np.ndarray, cosine: np.ndarray, scaled: np.ndarray, steps: int) -> tuple[list[int], np.ndarray]:
        """Greedy MAP where each item's conditional variance is given the last ``window − 1`` picks only:
        S_ii − S_iW S_WW⁻¹ S_Wi from a Cholesky factor of the small window (≤ w×w)."""
        n = len(similarity)
        diagonal = np.diag(similarity).copy()
        picked, variances = [], []
        blocked = np.zeros(n, bool)  # picked, or a near-duplicate of a picked image
        for _ in range(steps):
            recent = picked[-(self.window - 1):]
            conditional = diagonal.copy()
            if recent:
                factor = np.linalg.cholesky(similarity[np.ix_(recent, recent)] + self.epsilon * np.eye(len(recent)))
                projection = np.linalg.solve(factor, similarity[recent])  # triangular, at most (w−1) × n
                conditional -= (projection**2).sum(axis=0)
            value = np.where(blocked, -np.inf, self._objective(scaled, conditional))
            best = int(np.argmax(value))
            if value[best] == -np.inf:
                break
            picked.append(best)
            variances.append(conditional[best])
            blocked |= cosine[best] >= self.duplicate_cosine
            blocked[best] = True
        return picked, np.array(variances)


def taste_count(vectors: np.ndarray) -> float:
    """The effective number of tastes in a user's history of item vectors ``[m, d]``: the participation ratio
    1 / Σ λ² of the eigenvalues λ (summing to 1) of the unit vectors' second-moment matrix, which equals
    m² / ‖H Hᵀ‖²_F = 1 / mean of cos²(h_i, h_j) over all pairs, self-pairs included.

    m copies of one vector: 1; m orthogonal vectors: m; orthogonal groups of sizes a and b: (a + b)² / (a² + b²)
    (3 and 1: 16 / 10 = 1.6). An empty history: 1 (nothing known, one taste).
    """
    if len(vectors) == 0:
        return 1.0
    unit = unit_rows(np.asarray(vectors, dtype=np.float64))
    return float(1.0 / np.mean((unit @ unit.T) ** 2))


def early_exit(impression_times, k: int, session_gap_minutes: float = 30.0, sessions: int = 10) -> float | None:
    """How early a user leaves slates: over their last ``sessions`` sessions (impressions less than
    ``session_gap_minutes`` apart), the mean share of a ``k``-item slate they did not look at,
    max(0, 1 − impressions / k). None without impressions. It needs impressions logged for what was looked
    at (viewable impressions), as the built-in world logs them; a client that logs every served item gives 0.

    Example: sessions of 12, 6 and 3 impressions with k = 12 -> (0 + 0.5 + 0.75) / 3 ≈ 0.417.
    """
    if k <= 0:
        raise ValueError(f"k must be positive, got {k}")
    times = pd.DatetimeIndex(impression_times).sort_values()
    if len(times) == 0:
        return None
    gaps = (times[1:] - times[:-1]).total_seconds().to_numpy()  # seconds whatever the timestamps' unit
    breaks = np.flatnonzero(gaps > session_gap_minutes * 60) + 1
    counts = np.diff(np.r_[0, breaks, len(times)])[-sessions:]
    return float(np.mean(np.maximum(0.0, 1.0 - counts / k)))


@dataclasses.dataclass(frozen=True)
class UserBehaviour:
    """What the adaptive re-ranker knows of one user, read by the serving path from their events:
    ``early_exit`` (:func:`early_exit`; None: never seen a slate) and ``tastes`` (:func:`taste_count` of the
    history's image vectors; None: unknown)."""

    early_exit: float | None = None
    tastes: float | None = None


@dataclasses.dataclass
class AdaptiveDPP:
    """The sliding-window :class:`DPP` with its trade-off θ set per user from how they behave.

    θ = ``engaged`` for a user who reads whole slates, falling linearly with :attr:`UserBehaviour.early_exit`
    to ``bored`` at ``full_exit`` (and beyond), then ``taste_step`` lower per taste beyond the first
    (:attr:`UserBehaviour.tastes`), never below ``bored``. Users who leave monotonous slates early get more
    diversity, those who read to the end keep the relevance order nearly as it is: the strength follows
    the users' behaviour instead of being tuned to one world. Users never shown a slate get ``engaged``.

    Example (the defaults: engaged 0.9, bored 0.4, full_exit 0.2): a user who leaves a tenth of each slate
    unseen gets θ = 0.9 − 0.5 · 0.1 / 0.2 = 0.65; one who leaves a fifth or more, 0.4.
    """

    k: int
    behaviour: UserBehaviour = UserBehaviour()
    # Chosen on validation runs of the online simulator (benchmarks/longrun.py --validate, results in
    # benchmarks/results/longrun_validation.json; 2 seeds of a world not used for the report): the largest
    # gain in clicks per user with the behaviours on (+7.6% against plain two-tower) among the settings
    # costing <= 2% of clicks with them off (+1.4%: users who read whole slates get engaged = the DPP default).
    engaged: float = 0.9
    bored: float = 0.4
    full_exit: float = 0.2
    taste_step: float = 0.0  # tried at 0.1 on validation: +6.0% clicks on, -1.3% off (vs +4.2%, +1.4% at 0): not kept
    window: int | None = 10  # DPP_WINDOW

    def __post_init__(self):
        _validate_k_lambda(self.k, self.engaged)
        _validate_k_lambda(self.k, self.bored)
        if self.bored > self.engaged:
            raise ValueError(f"bored must be <= engaged (more diversity for bored users), got {self.bored} > {self.engaged}")
        if not 0 < self.full_exit <= 1:
            raise ValueError(f"full_exit must be in (0, 1], got {self.full_exit}")
        if self.taste_step < 0:
            raise ValueError(f"taste_step must be >= 0, got {self.taste_step}")

    def trade_off(self) -> float:
        """This user's θ."""
        exit_share = self.behaviour.early_exit or 0.0
        theta = self.engaged - (self.engaged - self.bored) * min(1.0, exit_share / self.full_exit)
        if self.behaviour.tastes is not None:
            theta -= self.taste_step * max(0.0, self.behaviour.tastes - 1.0)
        return float(max(self.bored, theta))

    def __call__(self, candidates: Candidates) -> Candidates:
        return DPP(self.k, self.trade_off(), window=self.window)(candidates)


@dataclasses.dataclass
class TopK:
    """Plain relevance order (no diversification)."""

    k: int

    def __call__(self, candidates: Candidates) -> Candidates:
        return candidates.take(np.argsort(-candidates.relevance, kind="stable")[: self.k])


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
                     behaviour: UserBehaviour | None = None, adaptive: dict | None = None) -> Pipeline:
    """The one place the serving slate is configured: exclude seen -> trend boost -> diversify to k.

    ``trade_off`` None takes the method's default from ``DEFAULT_TRADE_OFF`` (for "adaptive": the engaged
    user's θ). ``behaviour``: the user's, for "adaptive" (None: an engaged user); ``adaptive`` overrides
    :class:`AdaptiveDPP`'s other settings (default ``ADAPTIVE``).
    """
    check_method(method)
    stages = [ExcludeSeen(seen)]
    if trend_scores:
        stages.append(TrendBoost(trend_scores, trend_weight))
    if method == "none":
        stages.append(TopK(k))
    else:
        trade_off = DEFAULT_TRADE_OFF[method] if trade_off is None else trade_off
        if method == "adaptive":
            stages.append(AdaptiveDPP(k, behaviour or UserBehaviour(), trade_off, window=DPP_WINDOW, **{**ADAPTIVE, **(adaptive or {})}))
        else:
            stages.append(DPP(k, trade_off, window=DPP_WINDOW) if method == "dpp" else MMR(k, trade_off))
    return Pipeline(stages)
