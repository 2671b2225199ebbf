"""The re-ranking stages: each maps a :class:`Candidates` (row-aligned ids, vectors, relevance, notes) to
another, so the id and its vector always travel together. Exclusion, the trend boost, the relevance order
and the two diversifiers (MMR, DPP); :mod:`vistaste.serving.adaptive` adds the per-user DPP and
:mod:`vistaste.serving.rerank` chains them into the serving pipeline. Everything is deterministic given
its inputs (ties are broken by the incoming order).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Iterable, Protocol

import numpy as np

from vistaste.data.vectors import unit_rows


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
    """What a :class:`~vistaste.serving.rerank.Pipeline` chains: candidates in, candidates out (ids and vectors kept together)."""

    def __call__(self, candidates: Candidates) -> Candidates: ...


@dataclasses.dataclass
class ExcludeSeen:
    """Drop items the user already clicked or was recently shown."""

    seen: Iterable[str]

    def __call__(self, candidates: Candidates) -> Candidates:
        seen = set(self.seen)
        return candidates.take([i for i, item in enumerate(candidates.ids) if item not in seen])


# The trend boost where no model chose one (the simulator's "+trend" arm); serving uses the model card's.
DEFAULT_TREND_WEIGHT = 0.1


@dataclasses.dataclass
class TrendBoost:
    """relevance += weight * trend, where trend is in [0, 1] per item (from :class:`vistaste.data.trends.TrendTracker`).

    ``slots`` > 0 (a mixed slate, :class:`vistaste.data.trends.TrendSetting`): only the ``slots`` best by
    the lifted relevance are lifted, above every other candidate; the others keep their relevance (the
    model's order), as ``vistaste.towers.trend_boost.boosted`` ranks them in evaluation."""

    scores: dict[str, float]
    weight: float = DEFAULT_TREND_WEIGHT
    slots: int = 0

    def __call__(self, candidates: Candidates) -> Candidates:
        trend = np.array([self.scores.get(item, 0.0) for item in candidates.ids])
        out = candidates.take(np.arange(len(candidates)))
        out.trend = trend
        lifted = candidates.relevance + self.weight * trend
        if 0 < self.slots < len(candidates):
            head = np.argsort(-lifted, kind="stable")[:self.slots]
            # The head keeps its lifted order and spacing, shifted just above every other candidate.
            rest = np.delete(candidates.relevance, head)
            gap = HEAD_GAP * max(1.0, float(np.abs(candidates.relevance).max()))
            shift = max(float(rest.max()) - float(lifted[head].min()), 0.0) + gap
            lifted = candidates.relevance.astype(np.float64).copy()
            lifted[head] = candidates.relevance[head] + self.weight * trend[head] + shift
        out.relevance = lifted
        return out


HEAD_GAP = 1e-6  # a mixed slate's boosted places sit this far (relative to the scores) above the rest


def _scaled_relevance(relevance: np.ndarray) -> np.ndarray:
    """Min-max scale to [0, 1], so a trade-off means the same for any score scale (all equal -> ones)."""
    spread = relevance.max() - relevance.min()
    return (relevance - relevance.min()) / spread if spread > 0 else np.ones(len(relevance))


def check_k_and_trade_off(k: int, trade_off: float) -> None:
    """ValueError unless ``k`` is positive and ``trade_off`` is in [0, 1]."""
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
        check_k_and_trade_off(self.k, self.trade_off)

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
        check_k_and_trade_off(self.k, self.trade_off)
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



@dataclasses.dataclass
class TopK:
    """Plain relevance order (no diversification)."""

    k: int

    def __call__(self, candidates: Candidates) -> Candidates:
        return candidates.take(np.argsort(-candidates.relevance, kind="stable")[: self.k])

