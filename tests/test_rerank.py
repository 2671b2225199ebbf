import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vistaste.data.trends import TrendTracker
from vistaste.serving.rerank import DPP, MMR, Candidates, ExcludeSeen, TopK, TrendBoost, default_pipeline


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
        gains = [np.linalg.det(kernel[np.ix_(recent + [i], recent + [i])]) / base if i not in picked else -np.inf for i in range(len(vectors))]
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
