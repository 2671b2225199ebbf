import warnings

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vistaste.data.trends import TrendTracker
from vistaste.serving.adaptive import AdaptiveDPP, UserBehaviour, early_exit, taste_count
from vistaste.serving.rerank import default_pipeline
from vistaste.serving.rerank_stages import DPP, MMR, Candidates, ExcludeSeen, TopK, TrendBoost


def _candidates():
    # a and a2 are the same image; b is close to a; c and d point elsewhere.
    vectors = np.array([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.9, 0.436, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return Candidates(np.array(["a", "a2", "b", "c", "d"]), vectors, np.array([1.0, 0.99, 0.95, 0.6, 0.5]))


@pytest.mark.parametrize("method", [MMR, DPP])
def test_full_relevance_weight_reproduces_relevance_order(method):
    assert method(k=5, trade_off=1.0)(_candidates()).ids.tolist() == ["a", "a2", "b", "c", "d"]


@pytest.mark.parametrize("method", [MMR, DPP])
def test_duplicate_is_never_picked_twice_while_others_remain(method):
    picked = method(k=4, trade_off=0.5)(_candidates()).ids.tolist()
    assert picked[0] == "a"
    assert not {"a", "a2"} <= set(picked)
    assert {"c", "d"} <= set(picked)


def test_dpp_stops_before_exact_duplicates():
    vectors = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    out = DPP(k=3, trade_off=0.5)(Candidates(np.array(["x", "y", "z"]), vectors, np.array([3.0, 2.0, 1.0])))
    assert out.ids.tolist() == ["x"]  # the others add zero volume


def test_trend_boost_favours_a_rising_item():
    now = pd.Timestamp("2026-03-01", tz="UTC")
    clicks = pd.DataFrame({
        "item_id": ["rising"] * 5 + ["fading"] * 5,
        "timestamp": [now - pd.Timedelta(hours=h) for h in (1, 2, 3, 4, 5)] + [now - pd.Timedelta(days=d) for d in (5, 6, 7, 8, 9)],
    })
    scores = TrendTracker(half_life_hours=24).fit(clicks, now).scores(["rising", "fading", "never"])
    assert scores["rising"] == pytest.approx(1.0) and scores["rising"] > 10 * scores["fading"] and scores["never"] == 0.0
    candidates = Candidates(np.array(["fading", "rising"]), np.eye(2), np.array([0.52, 0.50]))
    assert TopK(2)(TrendBoost(scores, weight=0.1)(candidates)).ids.tolist() == ["rising", "fading"]


def test_tag_trends_lift_a_new_item_in_a_trending_style():
    now = pd.Timestamp("2026-03-01", tz="UTC")
    clicks = pd.DataFrame({"item_id": ["old-floral"] * 3, "timestamp": [now - pd.Timedelta(hours=1)] * 3})
    tags = {"old-floral": ["pattern:florals"], "new-floral": ["pattern:florals"], "new-plain": ["pattern:plain"]}
    scores = TrendTracker().fit(clicks, now, tags).scores(["new-floral", "new-plain"], tags)
    assert scores["new-floral"] > 0 and scores["new-plain"] == 0


def test_exclude_seen_and_pipeline_validation():
    out = ExcludeSeen({"a", "c"})(_candidates())
    assert out.ids.tolist() == ["a2", "b", "d"]
    with pytest.raises(ValueError, match="trade-off must be in"):
        MMR(k=3, trade_off=1.5)
    with pytest.raises(ValueError, match="method must be"):
        default_pipeline(3, method="random")


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 30), st.integers(1, 12), st.floats(0.0, 1.0), st.sampled_from(["dpp", "mmr", "none"]), st.integers(0, 1000))
def test_slates_are_unique_deterministic_and_honour_exclusions(n, k, trade_off, method, seed):
    rng = np.random.default_rng(seed)
    ids = np.array([f"i{j}" for j in range(n)])
    vectors = rng.normal(size=(n, 4))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    candidates = Candidates(ids, vectors, rng.normal(size=n))
    seen = set(ids[rng.random(n) < 0.3])
    pipeline = default_pipeline(k, seen, method=method, trade_off=trade_off)
    first, second = pipeline(candidates), pipeline(candidates)
    assert first.ids.tolist() == second.ids.tolist()
    assert len(set(first.ids)) == len(first.ids) <= k
    assert not seen & set(first.ids)
    if method != "dpp":
        assert len(first.ids) == min(k, n - len(seen))


def _naive_windowed_dpp(vectors, relevance, k, trade_off, window, bandwidth=None):
    """Greedy MAP by determinant ratios det(L[S+i]) / det(L[S]), S the last window-1 picks."""
    scaled = (relevance - relevance.min()) / (relevance.max() - relevance.min())
    quality = np.exp(trade_off / (2 * (1 - trade_off)) * scaled)
    if bandwidth is None:
        similarity = vectors @ vectors.T
    else:  # the Gaussian kernel written from squared distances, independently of the cosine shortcut
        distance2 = ((vectors[:, None, :] - vectors[None, :, :]) ** 2).sum(-1)
        similarity = np.exp(-distance2 / (2 * bandwidth**2))
    kernel = quality[:, None] * similarity * quality[None, :]
    picked = []
    for _ in range(k):
        recent = picked[-(window - 1):]
        base = np.linalg.det(kernel[np.ix_(recent, recent)]) if recent else 1.0
        gains = [np.linalg.det(kernel[np.ix_(recent + [i], recent + [i])]) / base if i not in picked else -np.inf
                 for i in range(len(vectors))]
        picked.append(int(np.argmax(gains)))
    return picked


@pytest.mark.parametrize("seed", range(5))
def test_sliding_window_dpp_matches_determinant_definition(seed):
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(12, 6))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    relevance = rng.normal(size=12)
    candidates = Candidates(np.array([f"i{j}" for j in range(12)]), vectors, relevance)
    out = DPP(k=8, trade_off=0.6, window=3)(candidates)
    assert out.ids.tolist() == [f"i{j}" for j in _naive_windowed_dpp(vectors, relevance, 8, 0.6, 3)]
    # A window as long as the slate is the whole-slate DPP.
    assert DPP(k=8, trade_off=0.6, window=8)(candidates).ids.tolist() == DPP(k=8, trade_off=0.6)(candidates).ids.tolist()
    # The same holds with the Gaussian kernel.
    out = DPP(k=8, trade_off=0.6, window=3, bandwidth=0.5)(candidates)
    assert out.ids.tolist() == [f"i{j}" for j in _naive_windowed_dpp(vectors, relevance, 8, 0.6, 3, bandwidth=0.5)]


def test_narrow_gaussian_kernel_repels_look_alikes_but_keeps_related_items():
    # "twin" looks almost like "top" (cosine 0.95); "cousin" is related (cosine 0.7); "other" is unrelated.
    vectors = np.array([[1.0, 0.0, 0.0], [0.95, np.sqrt(1 - 0.95**2), 0.0], [0.7, 0.0, np.sqrt(1 - 0.7**2)], [0.0, 0.0, 1.0]])
    candidates = Candidates(np.array(["top", "twin", "cousin", "other"]), vectors, np.array([1.0, 0.9, 0.8, 0.55]))
    cosine = DPP(k=2, trade_off=0.5)(candidates).ids.tolist()
    narrow = DPP(k=2, trade_off=0.5, bandwidth=0.3)(candidates).ids.tolist()
    assert cosine == ["top", "other"]  # the cosine kernel still finds the related item too close
    assert narrow == ["top", "cousin"]  # the narrow kernel only pushes out the look-alike
    assert DPP(k=4, trade_off=0.5, bandwidth=0.3)(candidates).ids.tolist()[:2] == ["top", "cousin"]
    with pytest.raises(ValueError, match="bandwidth"):
        DPP(k=2, bandwidth=0.0)


def test_sliding_window_lets_a_taste_return_after_the_window_but_never_a_duplicate():
    # Two near-identical images of one taste (a, a2; cosine 0.96), an exact duplicate of a, and two others.
    vectors = np.array([[1.0, 0.0, 0.0], [0.96, 0.28, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    candidates = Candidates(np.array(["a", "a2", "a-copy", "c", "d"]), vectors, np.array([1.0, 0.98, 0.97, 0.3, 0.2]))
    whole = DPP(k=4, trade_off=0.5)(candidates).ids.tolist()
    windowed = DPP(k=4, trade_off=0.5, window=2)(candidates).ids.tolist()
    assert "a2" not in whole[:3] and windowed == ["a", "c", "a2", "d"]
    assert "a-copy" not in windowed  # identical image, even though "a" left the window


def _similarity(vectors, bandwidth=None):
    if bandwidth is None:
        return vectors @ vectors.T
    return np.exp(-((vectors[:, None, :] - vectors[None, :, :]) ** 2).sum(-1) / (2 * bandwidth**2))  # from distances, not cosines


def _greedy_steps_by_determinants(vectors, relevance, picks, trade_off, epsilon=1e-10, bandwidth=None):
    """For each prefix of ``picks``, the value of every item as the next pick, from the definition:
    log det L[S+i], L = diag(q) S diag(q), q = exp(α·relevance), α = θ / (2(1 − θ)). Scaled by (1 − θ) > 0
    (same argmax), log det L_Y = θ·Σ_Y relevance + (1 − θ)·log det S_Y, finite even where q overflows; at
    θ = 1 only the relevance sum remains. Items with det S[S+i] / det S[S] < epsilon (spanned by the
    picks) and items already picked get -inf. Yields (values, the item picked there)."""
    scaled = (relevance - relevance.min()) / (relevance.max() - relevance.min())
    similarity = _similarity(vectors, bandwidth)
    for step in range(len(picks) + 1):
        picked = list(picks[:step])
        base = np.linalg.slogdet(similarity[np.ix_(picked, picked)])[1] if picked else 0.0
        values = np.full(len(vectors), -np.inf)
        for i in set(range(len(vectors))) - set(picked):
            chosen = picked + [i]
            sign, logdet = np.linalg.slogdet(similarity[np.ix_(chosen, chosen)])
            if trade_off == 1:
                values[i] = scaled[chosen].sum()
            elif sign > 0 and logdet - base >= np.log(epsilon):
                values[i] = trade_off * scaled[chosen].sum() + (1 - trade_off) * logdet
        yield values, (picks[step] if step < len(picks) else None)


def _assert_greedy_by_determinants(out, candidates, k, trade_off, bandwidth=None):
    """Each pick has the highest determinant value given the picks before it (ties within 1e-9 either
    way: at θ = 0 all singletons tie exactly), and the slate ends only when k is reached or nothing
    remains with positive volume."""
    picks = [int(i[1:]) for i in out.ids]
    for values, pick in _greedy_steps_by_determinants(candidates.vectors, candidates.relevance, picks, trade_off, bandwidth=bandwidth):
        if pick is None:
            assert len(picks) == k or np.all(values == -np.inf)
        else:
            assert values[pick] >= values.max() - 1e-9


def _random_candidates(seed, n=8, dim=10):
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(n, dim))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return Candidates(np.array([f"i{j}" for j in range(n)]), vectors, rng.normal(size=n))


@pytest.mark.parametrize("trade_off", [0.0, 0.5, 0.9, 0.999, 1.0])
@pytest.mark.parametrize("seed", range(4))
def test_dpp_matches_the_determinant_definition_for_every_trade_off(trade_off, seed):
    candidates = _random_candidates(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow, no log(0), whatever the pytest configuration
        out = DPP(k=5, trade_off=trade_off)(candidates)
        rbf = DPP(k=5, trade_off=trade_off, bandwidth=0.7)(candidates)
    _assert_greedy_by_determinants(out, candidates, 5, trade_off)
    _assert_greedy_by_determinants(rbf, candidates, 5, trade_off, bandwidth=0.7)
    assert len(out) == len(rbf) == 5  # 8 random directions in 10-d: no pick is spanned by others
    if trade_off == 1.0:
        assert out.ids.tolist() == TopK(5)(candidates).ids.tolist()
    else:  # the gain is the volume each pick adds: sqrt(det S_Y / det S_Y-minus-last)
        rows = [int(i[1:]) for i in out.ids]
        logdets = [np.linalg.slogdet(_similarity(candidates.vectors)[np.ix_(rows[:j], rows[:j])])[1] for j in range(1, 6)]
        np.testing.assert_allclose(out.diversity_gain, np.exp(np.diff([0.0] + logdets) / 2), rtol=1e-6)


@pytest.mark.parametrize("trade_off", [0.0, 0.5, 0.9])
def test_dpp_log_space_agrees_with_the_kernel_determinant_itself(trade_off):
    # Where q = exp(α·relevance) fits in float64, build L and take plain determinants: no log-space algebra.
    candidates = _random_candidates(7)
    scaled = (candidates.relevance - candidates.relevance.min()) / np.ptp(candidates.relevance)
    quality = np.exp(trade_off / (2 * (1 - trade_off)) * scaled)
    kernel = quality[:, None] * (candidates.vectors @ candidates.vectors.T) * quality[None, :]
    picked = []
    for _ in range(5):
        remaining = [i for i in range(8) if i not in picked]
        picked.append(max(remaining, key=lambda i: np.linalg.det(kernel[np.ix_(picked + [i], picked + [i])])))
    assert DPP(k=5, trade_off=trade_off)(candidates).ids.tolist() == [f"i{j}" for j in picked]


@pytest.mark.parametrize("trade_off", [0.999, 0.9999, 1 - 1e-12])
@pytest.mark.parametrize("window", [None, 3])
def test_dpp_near_full_relevance_weight_ranks_by_relevance_and_still_skips_duplicates(trade_off, window):
    # exp(α·relevance) overflowed here before (α = 499.5 at θ = 0.999) and the slate came back in input order.
    # As _candidates(), in 5-d so that c and d stay outside the plane of a and b.
    vectors = np.zeros((5, 5))
    vectors[[0, 1, 3, 4], [0, 0, 2, 3]] = 1.0
    vectors[2, :2] = [0.9, 0.436]
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    candidates = Candidates(np.array(["a", "a2", "b", "c", "d"]), vectors, np.array([1.0, 0.99, 0.95, 0.6, 0.5]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = DPP(k=5, trade_off=trade_off, window=window)(candidates)
    assert out.ids.tolist() == ["a", "b", "c", "d"]  # a2 is a copy of a: zero added volume at any θ < 1
    np.testing.assert_allclose(out.diversity_gain, [1.0, np.sqrt(1 - (vectors[0] @ vectors[2]) ** 2), 1.0, 1.0], rtol=1e-6)
    # In 3-d (the original set) c lies in the plane of a and b: it adds no volume either, the slate ends.
    assert DPP(k=5, trade_off=trade_off)(_candidates()).ids.tolist() == ["a", "b", "d"]


# ------------------------------------------------------------------------------- the adaptive re-ranker
def test_taste_count_on_hand_made_histories():
    x, y = np.array([1.0, 0.0]), np.array([0.0, 2.0])
    assert taste_count(np.zeros((0, 2))) == 1.0  # nothing known: one taste
    assert taste_count(np.stack([x, x, x])) == pytest.approx(1.0)
    assert taste_count(np.stack([x, y])) == pytest.approx(2.0)
    # Groups of 3 and 1 orthogonal items: cos² is 1 on 3·3 + 1·1 = 10 of 16 pairs -> 16 / 10.
    assert taste_count(np.stack([x, x, x, y])) == pytest.approx(1.6)
    # Against the eigenvalue definition (participation ratio of the unit vectors' second moment).
    vectors = np.random.default_rng(0).normal(size=(7, 4))
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    eigenvalues = np.linalg.eigvalsh(unit.T @ unit / len(unit))
    assert taste_count(vectors) == pytest.approx(1.0 / np.sum(eigenvalues**2))


def test_early_exit_on_hand_made_sessions():
    start = pd.Timestamp("2026-01-01", tz="UTC")
    # Sessions of 12, 6 and 3 impressions, seconds apart within a session, days apart between them.
    times = [start + pd.Timedelta(days=d, seconds=s) for d, n in ((0, 12), (1, 6), (2, 3)) for s in range(n)]
    assert early_exit(times, k=12) == pytest.approx((0 + 0.5 + 0.75) / 3)
    assert early_exit(times[::-1], k=12) == pytest.approx((0 + 0.5 + 0.75) / 3)  # any order
    assert early_exit(times, k=12, sessions=1) == pytest.approx(0.75)  # the latest session only
    assert early_exit(times, k=6) == pytest.approx((0 + 0 + 0.5) / 3)  # longer sessions than k count as read to the end
    assert early_exit([], k=12) is None
    with pytest.raises(ValueError, match="k must be positive"):
        early_exit(times, k=0)


def test_adaptive_trade_off_follows_the_users_behaviour():
    def theta(**behaviour):
        return AdaptiveDPP(12, UserBehaviour(**behaviour), engaged=0.9, bored=0.5, full_exit=0.5, taste_step=0.1).trade_off()

    assert theta() == pytest.approx(0.9)  # never seen a slate: engaged
    assert theta(early_exit=0.0) == pytest.approx(0.9)
    assert theta(early_exit=0.25) == pytest.approx(0.7)  # 0.9 - 0.4 * 0.25 / 0.5
    assert theta(early_exit=0.9) == pytest.approx(0.5)  # capped at bored
    assert theta(early_exit=0.0, tastes=3.0) == pytest.approx(0.7)  # 0.1 per taste beyond the first
    assert theta(early_exit=0.5, tastes=3.0) == pytest.approx(0.5)  # never below bored
    with pytest.raises(ValueError, match="bored must be <= engaged"):
        AdaptiveDPP(12, engaged=0.5, bored=0.9)
    with pytest.raises(ValueError, match="full_exit"):
        AdaptiveDPP(12, full_exit=0.0)


@pytest.mark.parametrize("early", [None, 0.1, 0.3, 0.8])
def test_adaptive_is_the_windowed_dpp_at_the_users_trade_off(early):
    rng = np.random.default_rng(3)
    vectors = rng.normal(size=(40, 6))
    candidates = Candidates(np.array([f"i{j}" for j in range(40)]), vectors, rng.normal(size=40))
    behaviour = UserBehaviour(early_exit=early)
    adaptive = default_pipeline(10, method="adaptive", behaviour=behaviour)(candidates)
    theta = AdaptiveDPP(10, behaviour).trade_off()
    fixed = default_pipeline(10, method="dpp", trade_off=theta)(candidates)
    assert adaptive.ids.tolist() == fixed.ids.tolist()
    # More early exits, lower θ: the bored user's slate trades relevance for diversity.
    engaged = default_pipeline(10, method="adaptive", behaviour=UserBehaviour(early_exit=0.0))(candidates)
    bored = default_pipeline(10, method="adaptive", behaviour=UserBehaviour(early_exit=1.0))(candidates)
    assert bored.ids.tolist() == default_pipeline(10, method="dpp", trade_off=AdaptiveDPP.bored)(candidates).ids.tolist()
    assert engaged.ids.tolist() == default_pipeline(10, method="dpp", trade_off=AdaptiveDPP.engaged)(candidates).ids.tolist()
    assert bored.ids.tolist() != engaged.ids.tolist()


@pytest.mark.parametrize("theta", [0.0, 0.2, 0.4])
def test_adaptive_with_a_trade_off_below_the_bored_users_is_that_trade_off_for_everyone(theta):
    # Found by schemathesis over HTTP: POST /recommendations with trade_off 0.0 and the adaptive default was a 500.
    rng = np.random.default_rng(5)
    candidates = Candidates(np.array([f"i{j}" for j in range(30)]), rng.normal(size=(30, 6)), rng.normal(size=30))
    fixed = default_pipeline(8, method="dpp", trade_off=theta)(candidates).ids.tolist()
    for early in (None, 0.0, 1.0):
        adaptive = default_pipeline(8, method="adaptive", trade_off=theta, behaviour=UserBehaviour(early_exit=early))
        assert adaptive(candidates).ids.tolist() == fixed
