"""Metrics against numbers worked out by hand: novelty, the bootstrap interval, the simulator's day and summary."""
import math

import numpy as np
import pandas as pd
import pytest

from vistaste.bench.sim_metrics import day_metrics, slate_change, slate_diversity, summarise
from vistaste.bench.tradeoff import paired_change_interval
from vistaste.towers import metrics


def test_novelty_is_mean_self_information_of_smoothed_click_shares():
    popularity = np.array([5.0, 1.0, 0.0, 2.0])  # 8 clicks over 4 items; add-one smoothing: p = (c + 1) / 12
    top = np.array([[0, 1], [2, 3]])
    expected = np.mean([-math.log2(6 / 12), -math.log2(2 / 12), -math.log2(1 / 12), -math.log2(3 / 12)])
    assert metrics.novelty(top, popularity, 2) == pytest.approx(expected)
    assert metrics.novelty(top, popularity, 1) == pytest.approx(np.mean([-math.log2(6 / 12), -math.log2(1 / 12)]))


def test_bootstrap_interval_matches_a_hand_resampled_reference():
    recall = np.array([0.5, 0.0, 1.0, 0.25])
    baseline = np.array([0.25, 0.25, 0.5, 0.5])
    low, high = paired_change_interval(recall, baseline, resamples=200, level=0.8, seed=3)
    # The same resamples by hand: users drawn together for both rankings.
    rows = np.random.default_rng(3).integers(0, 4, (200, 4))
    change = [recall[r].mean() / baseline[r].mean() - 1 for r in rows]
    assert (low, high) == pytest.approx(tuple(np.quantile(change, [0.1, 0.9])))
    assert low <= recall.mean() / baseline.mean() - 1 <= high  # the point estimate (0.4375 / 0.375 - 1) lies inside
    # Identical rankings: no change, whatever the resample.
    assert paired_change_interval(recall + 0.1, recall + 0.1) == pytest.approx((0.0, 0.0))


def test_simulator_summary_is_the_seed_mean_with_a_t_interval():
    columns = ["ctr", "clicks_per_user", "coverage", "diversity", "cold_click_share", "regret"]
    rows = []
    # Arm "two-tower": seed means of ctr 0.1, 0.2, 0.3 (two days each, averaged first); "oracle": one seed.
    for seed, ctr in enumerate([0.1, 0.2, 0.3]):
        for day_offset in (-0.05, 0.05):
            rows.append({"arm": "two-tower", "seed": seed, **{c: 1.0 for c in columns}, "ctr": ctr + day_offset})
    rows.append({"arm": "oracle", "seed": 0, **{c: 2.0 for c in columns}})
    out = summarise(pd.DataFrame(rows))
    assert list(out.index) == ["two-tower", "oracle"]  # the simulator's arm order
    assert out.loc["two-tower", "ctr"] == pytest.approx(0.2)
    # t(0.975, 2 dof) = 4.302653; sample std of (0.1, 0.2, 0.3) = 0.1; n = 3.
    assert out.loc["two-tower", "ctr_ci95"] == pytest.approx(4.302653 * 0.1 / math.sqrt(3), rel=1e-6)
    assert out.loc["two-tower", "clicks_per_user_ci95"] == pytest.approx(0.0)
    assert out.loc["two-tower", "seeds"] == 3
    assert math.isnan(out.loc["oracle", "ctr_ci95"])  # one seed: no interval, not a made-up one


def test_simulator_day_metrics_by_hand():
    # Four items on the unit circle: 0 at 0 degrees, 1 at 90, 2 at 180, 3 at 0 again (a twin of item 0).
    unit = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [1.0, 0.0]])
    slates = np.array([[0, 1, 2], [3, 0, -1]])  # -1: PAD, an empty place
    examined = np.array([[True, True, False], [True, True, False]])
    clicks = np.array([[True, False, False], [True, True, False]])
    created_day = np.array([0, 0, 5, 7])  # items 2 and 3 are cold from day 5
    out = day_metrics(slates, examined, clicks, unit, created_day, cold_from_day=5, n_available=5)
    assert out["impressions"] == 4 and out["clicks"] == 3
    assert out["ctr"] == pytest.approx(3 / 4) and out["clicks_per_user"] == pytest.approx(3 / 2)
    assert out["coverage"] == pytest.approx(4 / 5)  # items 0, 1, 2, 3 of 5 available
    # Slate 1: cosines (0,1) 0, (0,2) -1, (1,2) 0 -> mean -1/3 -> 4/3; slate 2: (3,0) 1 -> 0. Mean 2/3.
    assert slate_diversity(unit[[0, 1, 2]]) == pytest.approx(4 / 3)
    assert out["diversity"] == pytest.approx(2 / 3)
    # Clicked: 0 (warm), 3 (cold), 0 (warm).
    assert out["cold_clicks"] == 1 and out["cold_click_share"] == pytest.approx(1 / 3)
    # Today {0, 1} after yesterday {2}: cosines -1 and 0 -> 1 - (-1/2) = 3/2.
    assert slate_change(unit[[0, 1]], unit[[2]]) == pytest.approx(1.5)
    empty = day_metrics(np.full((1, 2), -1), np.zeros((1, 2), bool), np.zeros((1, 2), bool), unit, created_day, 5, 4)
    assert (empty["ctr"], empty["coverage"], empty["diversity"], empty["cold_click_share"]) == (0.0, 0.0, 0.0, 0.0)
