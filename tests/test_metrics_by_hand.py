"""Metrics against numbers worked out by hand: novelty, the bootstrap interval, the simulator's summary."""
import math

import numpy as np
import pandas as pd
import pytest

from vistaste.bench.sim_metrics import summarise
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
