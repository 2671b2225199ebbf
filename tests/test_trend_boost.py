"""The trend boost: ranked as serving ranks, chosen on validation only when it helps."""
import numpy as np
import pandas as pd
import pytest

from vistaste.data.trends import MEMORY_HALF_LIVES, TrendSetting
from vistaste.towers import metrics, trend_boost
from vistaste.towers.features import ItemTable
from vistaste.towers.slices import Slice

NOW = pd.Timestamp("2026-03-01", tz="UTC")


def _table(n: int, tags: list[list[str]] | None = None) -> ItemTable:
    vocabulary = sorted({t for row in tags or [] for t in row})
    multi_hot = np.array([[float(t in row) for t in vocabulary] for row in tags], np.float32) if tags else np.zeros((n, 0), np.float32)
    return ItemTable(np.array([f"i{j}" for j in range(n)], dtype=object), np.eye(n, dtype=np.float32), multi_hot, vocabulary)


def _reference_ranking(scores, hidden, trend, weight, n_candidates, slots=0):
    """By hand: drop hidden items, take the n best by score, order them by score + weight * trend, then the
    rest by score. A mixed slate (``slots``): the first ``slots`` of that order, then everything else by score."""
    order = [j for j in np.argsort(-scores, kind="stable") if j not in set(hidden)]
    candidates, rest = order[:n_candidates], order[n_candidates:]
    candidates = sorted(candidates, key=lambda j: -(scores[j] + weight * trend[j]))
    if slots and weight:
        head = candidates[:slots]
        return head + [j for j in order if j not in head]
    return candidates + rest


def test_boosted_ranks_as_serving_does_against_a_hand_reference():
    rng = np.random.default_rng(4)
    for trial in range(20):
        n, n_candidates = 12, int(rng.integers(1, 12))
        scores = rng.normal(size=(1, n))
        trend = rng.random(n)
        hidden = rng.choice(n, 3, replace=False)
        weight = float(rng.choice([0.0, 0.3, 5.0]))
        ranked = trend_boost.boosted(scores, [hidden], None, trend, weight, n_candidates)
        got = [j for j in np.argsort(-ranked[0], kind="stable") if np.isfinite(ranked[0, j])]
        assert got == _reference_ranking(scores[0], hidden, trend, weight, n_candidates)[:len(got)]
        assert len(got) == n - 3 and np.isneginf(ranked[0, hidden]).all()


def test_a_mixed_slate_fills_its_first_places_by_the_boost_and_the_rest_by_the_model():
    """``slots``: the first places from the boosted order, every later one the model's, by hand; serving's
    re-ranking stage (over the same unseen candidates) orders them the same way."""
    from vistaste.serving.rerank_stages import Candidates, TopK, TrendBoost

    rng = np.random.default_rng(5)
    for trial in range(30):
        n, n_candidates, slots = 14, int(rng.integers(1, 14)), int(rng.integers(1, 8))
        scores = rng.normal(size=(1, n))
        trend = rng.random(n)
        hidden = rng.choice(n, 3, replace=False)
        weight = float(rng.choice([0.0, 0.5, 5.0]))
        ranked = trend_boost.boosted(scores, [hidden], None, trend, weight, n_candidates, slots)
        got = [j for j in np.argsort(-ranked[0], kind="stable") if np.isfinite(ranked[0, j])]
        expected = _reference_ranking(scores[0], hidden, trend, weight, n_candidates, slots)
        assert got == expected and np.isneginf(ranked[0, hidden]).all()
        # Serving: its candidates are the n best unseen; the stage's order over them is the same.
        unseen = [j for j in np.argsort(-scores[0], kind="stable") if j not in set(hidden)][:n_candidates]
        ids = np.array([f"i{j}" for j in unseen])
        stage = TrendBoost({f"i{j}": float(trend[j]) for j in range(n)}, weight, slots)
        served = TopK(len(unseen))(stage(Candidates(ids, np.eye(n)[unseen], scores[0, unseen])))
        assert served.ids.tolist() == [f"i{j}" for j in expected[:len(unseen)]]
    # Worked case: four items, model order a > b > c > d, only d trends; one boosted place puts d first.
    scores = np.array([[4.0, 3.0, 2.0, 1.0]])
    ranked = trend_boost.boosted(scores, [np.zeros(0, np.int64)], None, np.array([0.0, 0.0, 0.0, 1.0]), 10.0, 4, slots=1)
    assert np.argsort(-ranked[0]).tolist() == [3, 0, 1, 2]


def test_choose_takes_a_mixed_slate_when_only_it_keeps_both_the_trend_and_the_model():
    """Users want the model's top 6 and the most trending item; ten items trend, the more the lower the model
    ranks them. Any weight on every place trades model items for trending ones (at best 6 of 7 in the top
    10); a slate with 4 boosted places holds all 7."""
    n = 20
    table = _table(n)
    scores = np.tile(-0.1 * np.arange(n), (3, 1))
    clicks = pd.DataFrame({"item_id": [f"i{j}" for j in range(10, n) for _ in range(j)],
                           "timestamp": NOW - pd.Timedelta(hours=1)})  # item j (10..19) clicked j times
    s = _slice([[0, 1, 2, 3, 4, 5, 19]] * 3, 3)

    def hits(ranked):
        return float(np.mean([len(set(top) & set(r)) / len(r) for top, r in zip(metrics.top_k(ranked, 10), s.relevant)]))

    setting, tried = trend_boost.choose(scores, s, np.ones(n, bool), clicks, s.cuts, table, hits)
    assert max(r["value"] for r in tried if r["slots"] == 0) <= 6 / 7 + 1e-9
    assert setting.slots == 4 and setting.weight > 0
    assert next(r for r in tried if r["chosen"])["value"] == pytest.approx(1.0)


def test_trend_vector_is_decayed_click_velocity_scaled_over_the_catalog():
    table = _table(3)
    hour = pd.Timedelta(hours=1)
    clicks = pd.DataFrame({"item_id": ["i0", "i0", "i1", "i2"], "timestamp": [NOW - 24 * hour, NOW - 48 * hour, NOW, NOW + hour]})
    got = trend_boost.trend_vector(clicks, NOW, table, half_life_hours=24.0, tag_share=0.0)
    velocity = np.array([0.5 + 0.25, 1.0, 0.0])  # 2^-(age/24h); i2's click is in the future
    np.testing.assert_allclose(got, velocity / velocity.max())


def test_trend_matrix_uses_each_users_own_cut_and_forgets_beyond_memory():
    table = _table(2)
    clicks = pd.DataFrame({"item_id": ["i0", "i1"], "timestamp": [NOW - pd.Timedelta(days=10), NOW - pd.Timedelta(hours=1)]})
    cuts = pd.DatetimeIndex([NOW - pd.Timedelta(days=5), NOW])
    got = trend_boost.trend_matrix(clicks, cuts, table, 24.0, 0.0)
    np.testing.assert_allclose(got[0], [1.0, 0.0])  # before i1's click, only i0 has velocity
    np.testing.assert_allclose(got[1], [0.0, 1.0])  # i0's click is 10 days old: beyond 8 half-lives, forgotten


def _slice(relevant: list[list[int]], n_users: int) -> Slice:
    return Slice("warm users", np.array([f"u{u}" for u in range(n_users)], dtype=object), np.zeros((n_users, 1), np.int64),
                 [np.zeros(0, np.int64)] * n_users, [np.zeros(0, np.int64)] * n_users, [np.array(r) for r in relevant],
                 pd.DatetimeIndex([NOW] * n_users))


def _ndcg(s):
    return lambda ranked: metrics.ndcg(metrics.top_k(ranked, 2), s.relevant, 2)


def test_choose_takes_a_boost_when_trending_items_are_relevant_and_none_otherwise():
    n = 10
    table = _table(n)
    rng = np.random.default_rng(0)
    scores = rng.normal(scale=0.1, size=(6, n))
    recent = [NOW - pd.Timedelta(hours=2)] * 30
    trending = pd.DataFrame({"item_id": ["i7"] * 20 + ["i8"] * 10, "timestamp": recent})
    s = _slice([[7, 8]] * 6, 6)
    setting, tried = trend_boost.choose(scores, s, np.ones(n, bool), trending, s.cuts, table, _ndcg(s))
    assert setting.weight > 0 and len(tried) > 1
    best = max(tried, key=lambda r: r["value"])
    assert best["value"] == pytest.approx(1.0) and tried[0]["weight"] == 0.0
    # The same clicks, but users want other items: boosting can only hurt, so none is chosen.
    s_other = _slice([[0, 1]] * 6, 6)
    scores_other = scores.copy()
    scores_other[:, [0, 1]] += 1.0
    setting, _ = trend_boost.choose(scores_other, s_other, np.ones(n, bool), trending, s_other.cuts, table, _ndcg(s_other))
    assert setting.weight == 0.0


def test_setting_round_trips_and_remembers_enough_half_lives():
    setting = TrendSetting(72.0, 0.5, 0.3, slots=4)
    assert TrendSetting.from_dict({**setting.to_dict(), "chosen_by": "validation"}) == setting
    assert TrendSetting.from_dict(None).weight == 0.0
    assert TrendSetting.from_dict({"half_life_hours": 24.0, "tag_share": 0.0, "weight": 0.1}).slots == 0  # cards before mixed slates
    assert setting.describe() == "half-life 72 h, tag share 0.5, weight 0.3, first 4 places"
    assert setting.memory() == pd.Timedelta(hours=72 * MEMORY_HALF_LIVES)
    assert 2.0 ** -MEMORY_HALF_LIVES < 0.005


def test_trends_are_measured_at_the_latest_click_known():
    """A log that ended long ago still says what was trending when it ended; live clicks move the clock."""
    table = _table(2)
    ended = NOW - pd.Timedelta(days=400)
    clicks = pd.DataFrame({"item_id": ["i0", "i0", "i1"],
                           "timestamp": [ended, ended - pd.Timedelta(hours=24), ended - pd.Timedelta(hours=24)]})
    setting = TrendSetting(24.0, 0.0, 1.0)
    stale = setting.catalog_scores(clicks, NOW, table.ids)
    np.testing.assert_allclose(stale, [1.0, 0.5 / 1.5])  # as of `ended`: i0 = 1 + 0.5, i1 = 0.5
    live = pd.concat([clicks, pd.DataFrame({"item_id": ["i1"], "timestamp": [NOW]})], ignore_index=True)
    np.testing.assert_allclose(setting.catalog_scores(live, NOW, table.ids), [0.0, 1.0])  # the old clicks are forgotten


@pytest.mark.parametrize("gain, boosted", [(0.005, False), (0.02, True)])
def test_a_boost_must_beat_none_by_the_minimum_gain(gain, boosted):
    n = 6
    table = _table(n)
    s = _slice([[0]] * 3, 3)
    scores = np.random.default_rng(1).normal(size=(3, n))
    clicks = pd.DataFrame({"item_id": ["i5"] * 3, "timestamp": [NOW - pd.Timedelta(hours=1)] * 3})
    base = metrics.exclude(scores, s.exclude, np.ones(n, bool))

    def metric(ranked):  # any boosted ranking scores `gain` better than the model's own
        return 1.0 if np.array_equal(ranked, base) else 1.0 + gain

    setting, _ = trend_boost.choose(scores, s, np.ones(n, bool), clicks, s.cuts, table, metric)
    assert (setting.weight > 0) == boosted and trend_boost.MIN_RELATIVE_GAIN == 0.01


def test_breadth_floor_counts_top_k_coverage_against_most_popular_by_hand():
    n = 8
    s = _slice([[0]] * 3, 3)
    s.exclude[1] = np.array([0])  # user 1 has consumed item 0
    popularity = np.array([9, 8, 7, 1, 1, 1, 1, 0])
    # Most-popular's top 2: users 0 and 2 get {0, 1}, user 1 gets {1, 2} -> 3 distinct items of 8.
    allowed = trend_boost.breadth_floor(s, np.ones(n, bool), popularity, min_breadth=2.0, k=2)  # needs 6 distinct items
    personal = np.array([[0, 0, 0, 0, 0, 0, 1, 2], [0, 0, 0, 9, 8, 0, 0, 0], [5, 6, 0, 0, 0, 0, 0, 0]], float)  # {7, 6}, {3, 4}, {1, 0}
    assert allowed(personal)  # 6 items
    same = np.tile(np.array([0, 0, 0, 0, 0, 0, 1, 2], float), (3, 1))
    assert not allowed(same)  # 2 items
    assert trend_boost.breadth_floor(s, np.ones(n, bool), popularity, min_breadth=0.5, k=2)(same)  # 2 >= 1.5
    assert trend_boost.breadth_floor(s, np.ones(n, bool), popularity, min_breadth=0.0) is None  # no floor


def test_choose_takes_no_boost_the_breadth_floor_refuses():
    n = 10
    table = _table(n)
    scores = np.random.default_rng(0).normal(scale=0.1, size=(6, n))
    trending = pd.DataFrame({"item_id": ["i7"] * 20 + ["i8"] * 10, "timestamp": [NOW - pd.Timedelta(hours=2)] * 30})
    s = _slice([[7, 8]] * 6, 6)

    def narrow_is_refused(ranked):  # a floor every ranking that shows the trending items 7 or 8 in a top 2 fails
        return not np.isin(metrics.top_k(ranked, 2), [7, 8]).any()

    setting, tried = trend_boost.choose(scores, s, np.ones(n, bool), trending, s.cuts, table, _ndcg(s), allowed=narrow_is_refused)
    assert setting.weight == 0.0 and not all(r["allowed"] for r in tried)
    assert [r["chosen"] for r in tried].count(True) == 1 and tried[0]["chosen"]
    free, tried_free = trend_boost.choose(scores, s, np.ones(n, bool), trending, s.cuts, table, _ndcg(s))
    assert free.weight > 0 and next(r for r in tried_free if r["chosen"])["weight"] == free.weight
