"""The world's user behaviours (issue 13) on hand-made users: satiation, slate boredom, trend following and
return, each against numbers worked out by hand; with them off, the click model of the world before them."""
import hashlib
import json
import math

import numpy as np
import pandas as pd
import pytest

from vistaste.bench.sim_metrics import summarise, t_interval
from vistaste.bench.simulate import SimulationConfig, run_seed
from vistaste.bench.truth import GroundTruth
from vistaste.bench.users import UserState
from vistaste.bench.world import generate_world
from vistaste.bench.world_config import BEHAVIOUR_STRENGTHS, WorldConfig

TREND_PATTERN = 5


def _truth(**config) -> GroundTruth:
    """Two users, six items, one trend. User 0 likes palette 0 + pattern 0 (one taste); user 1 likes that
    and palette 1 + pattern 1. Items 0-2 have taste (0, 0); items 3, 4 have (1, 1) and (2, 2); item 5 has
    palette 3 and the trending pattern. Style never matches, quality is 0: a taste match is worth
    palette 1 + pattern 1.2 + combo 2.6 = 4.8 logits."""
    config = WorldConfig.without_behaviours(items=6, users=2, days=20, images=False, **config)
    return GroundTruth(
        config=config,
        item_ids=np.array([f"i{k}" for k in range(6)]),
        item_palette=np.array([0, 0, 0, 1, 2, 3]),
        item_pattern=np.array([0, 0, 0, 1, 2, TREND_PATTERN]),
        item_style=np.full(6, 2),
        item_quality=np.zeros(6),
        item_created_day=np.zeros(6, dtype=int),
        item_shape=np.zeros(6, dtype=int),
        item_layout=np.zeros(6, dtype=int),
        user_ids=np.array(["u0", "u1"]),
        taste_palette=np.array([[0, 0, 0], [0, 1, 0]]),
        taste_pattern=np.array([[0, 0, 0], [0, 1, 0]]),
        taste_style=np.zeros((2, 3), dtype=int),
        taste_weight=np.array([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0]]),
        # amplitude 0: the trend's own (global) boost is off, so only a user's pull toward it shows
        trends=[{"attribute": "pattern", "value": TREND_PATTERN, "peak_day": 10.0, "width": 2.0, "amplitude": 0.0}],
    )


def _sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


NO_CLICK = np.ones((1, 1))  # dice of 1.0 never click
CLICK = np.zeros((1, 1))  # dice of 0.0 always click (p > 0)


def test_behaviours_off_give_the_click_model_before_them():
    truth = _truth()
    state = UserState(truth)
    users, slates = np.array([0, 1]), np.array([[0, 3, 5], [4, 1, 2]])
    state.observe(np.array([1]), np.array([1]), np.array([True]), 2.0)  # user 1 clicked item 1: fatigue
    r = state.respond(users, slates, 2.5, dice=np.ones((2, 3)))
    logits = np.stack([truth.logits(users[[a]], slates[a], 2.5)[0] for a in range(2)])
    expected = 1.0 / (1.0 + np.exp(-logits)) / (1.0 + np.arange(3)) ** truth.config.position_decay
    expected[1, 1] *= truth.config.fatigue
    assert np.array_equal(r.probability, expected)  # bit for bit
    assert r.examined.all() and np.array_equal(r.examine_probability, np.ones((2, 3)))
    assert r.probability[0, 0] == pytest.approx(_sigmoid(-4.0 + 4.8))
    assert np.array_equal(state.logits(users, np.arange(6), 7.0), truth.logits(users, np.arange(6), 7.0))
    for _ in range(3):
        state.end_day()
    assert np.array_equal(state.logits(users, np.arange(6), 7.0), truth.logits(users, np.arange(6), 7.0))
    assert state.visits(users).all()  # no dice needed: everybody who would come, comes


def test_a_world_without_behaviours_logs_what_it_logged_before_them(tmp_path):
    generate_world(tmp_path, WorldConfig.without_behaviours(items=80, users=60, days=5, images=False, seed=9), progress=False)
    logs = pd.read_parquet(tmp_path / "interactions.parquet")
    # Recorded with the world's code before the behaviours were added (issue 13): the same events, bit for bit.
    assert (len(logs), int((logs["event"] == "click").sum())) == (1832, 50)
    assert hashlib.sha256(logs.to_csv(index=False).encode()).hexdigest() == (
        "90921cf75c8f45c429f2bfade9d2e96eaca910d6511575d4b65badc18ce77eb7")


def test_a_world_without_behaviours_writes_its_files_as_before(tmp_path):
    generate_world(tmp_path / "off", WorldConfig.without_behaviours(items=60, users=30, days=3, images=False), progress=False)
    meta = json.loads((tmp_path / "off" / "ground_truth" / "world.json").read_text())
    summary = json.loads((tmp_path / "off" / "summary.json").read_text())
    assert "satiation" not in meta["config"] and "behaviours" not in summary
    generate_world(tmp_path / "on", WorldConfig.with_behaviours(items=60, users=30, days=3, images=False), progress=False)
    loaded = GroundTruth.load(tmp_path / "on" / "ground_truth").config
    assert loaded.behaviours == BEHAVIOUR_STRENGTHS
    # ... and a world written without them (or before them) loads without them, though the default has them on.
    assert not any(GroundTruth.load(tmp_path / "off" / "ground_truth").config.behaviours.values())
    assert json.loads((tmp_path / "on" / "summary.json").read_text())["behaviours"] == BEHAVIOUR_STRENGTHS


def test_with_behaviours_sets_the_documented_strengths_and_checks_them():
    config = WorldConfig.with_behaviours(boredom=0.0, users=7)
    assert config.users == 7 and config.boredom == 0.0 and config.satiation == BEHAVIOUR_STRENGTHS["satiation"]
    assert WorldConfig().behaviours == BEHAVIOUR_STRENGTHS  # on by default (issue 13)
    assert not any(WorldConfig.without_behaviours(users=7).behaviours.values())
    assert WorldConfig.with_behaviours(users=7) == WorldConfig(users=7)
    with pytest.raises(ValueError, match="boredom must be in \\[0, 1\\], got 1.5"):
        WorldConfig(boredom=1.5)
    with pytest.raises(ValueError, match="satiation_half_life must be positive"):
        WorldConfig(satiation_half_life=0)
    with pytest.raises(TypeError):
        WorldConfig.with_behaviours(satiaton=0.1)  # misspelled: not swallowed


def test_satiation_lowers_a_taste_then_recovers_over_days():
    truth = _truth(satiation=0.2, satiation_view_weight=0.1, satiation_half_life=3.0)
    state = UserState(truth)
    before = state.logits(np.array([0]), np.arange(6), 1.0)[0]
    assert before[1] == pytest.approx(-4.0 + 4.8)
    state.respond(np.array([0]), np.array([[0]]), 1.0, dice=CLICK)  # looked (0.1) and clicked (1): s = 1.1
    after = state.logits(np.array([0]), np.arange(6), 1.0)[0]
    # Every item of that taste lost the same share of its match; other items are untouched.
    assert after[1] == pytest.approx(-4.0 + 4.8 * math.exp(-0.2 * 1.1))
    assert after[2] == after[1] and np.array_equal(after[3:], before[3:])
    # A view without a click tires less: s = 1.1 + 0.1.
    state.respond(np.array([0]), np.array([[1]]), 1.0, dice=NO_CLICK)
    assert state.satiation[0, 0] == pytest.approx(1.2)
    # It halves every three days (the rebound): after 3 days s = 0.6, after 30 days almost nothing.
    for day in range(3):
        state.end_day()
    assert state.logits(np.array([0]), np.array([2]), 4.0)[0, 0] == pytest.approx(-4.0 + 4.8 * math.exp(-0.2 * 0.6))
    for day in range(27):
        state.end_day()
    assert state.logits(np.array([0]), np.array([2]), 30.0)[0, 0] == pytest.approx(before[2], abs=0.005)


def test_satiation_tires_only_the_taste_that_was_consumed():
    truth = _truth(satiation=0.2)
    state = UserState(truth)
    before = state.logits(np.array([1]), np.arange(6), 1.0)[0]
    for _ in range(5):
        state.respond(np.array([1]), np.array([[3]]), 1.0, dice=CLICK)  # user 1 binges on their second taste
    after = state.logits(np.array([1]), np.arange(6), 1.0)[0]
    assert after[3] < before[3] - 1.0  # that taste is tired
    assert np.array_equal(after[:3], before[:3])  # the first taste is as fresh as before
    # What an item counts toward: its user's taste it fully matches (components they lack count nothing).
    assert truth.taste_hits(np.array([1, 1, 0]), np.array([3, 4, 0])).tolist() == [[0, 1, 0], [0, 0, 0], [1, 0, 0]]


def test_a_monotonous_slate_is_abandoned_earlier_than_a_varied_one():
    truth = _truth(boredom=0.5)
    state = UserState(truth)
    monotonous, varied = np.array([[0, 1, 2, 0]]), np.array([[0, 3, 4, 5]])
    assert state.redundancy(monotonous).tolist() == [[0.0, 1.0, 1.0, 1.0]]
    assert state.redundancy(np.array([[0, 3, 1, 2]])).tolist() == [[0.0, 0.0, 0.5, 2 / 3]]
    # Leaving after position j has probability 0.5 * redundancy(j): looking at position j needs no exit before.
    r = state.respond(np.array([0, 0]), np.vstack([monotonous, varied]), 1.0, dice=np.ones((2, 4)), stop_dice=np.full((2, 4), 0.4))
    assert r.examine_probability.tolist() == [[1.0, 1.0, 0.5, 0.25], [1.0, 1.0, 1.0, 1.0]]
    assert r.examined.tolist() == [[True, True, False, False], [True, True, True, True]]  # 0.4 < 0.5: gone after the 2nd
    r = state.respond(np.array([0]), monotonous, 1.0, dice=np.ones((1, 4)), stop_dice=np.full((1, 4), 0.6))
    assert r.examined.all()  # dice above every stop probability: reads on
    with pytest.raises(ValueError, match="stop_dice"):
        state.respond(np.array([0]), monotonous, 1.0, dice=np.ones((1, 4)))
    # Items past a PAD-like invalid slot are neither seen nor clicked; invalid slots count for nothing.
    valid = np.array([[True, True, False, True]])
    r = state.respond(np.array([0]), monotonous, 1.0, dice=np.zeros((1, 4)), stop_dice=np.ones((1, 4)), valid=valid)
    assert r.clicks.tolist() == [[True, True, False, True]] and r.examine_probability[0, 2] == 0.0


def test_clicking_a_trend_pulls_the_user_toward_it_and_the_pull_decays():
    truth = _truth(trend_following=1.0, trend_pull_step=0.3, trend_pull_half_life=4.0)
    state = UserState(truth)
    before = state.logits(np.array([0]), np.arange(6), 10.0)[0]
    state.respond(np.array([0]), np.array([[5]]), 10.0, dice=CLICK)  # a click at the trend's peak: pull 0.3
    assert state.trend_pull[0, 0] == pytest.approx(0.3)
    after = state.logits(np.array([0]), np.arange(6), 10.0)[0]
    assert after[5] == pytest.approx(before[5] + 0.3) and np.array_equal(after[:5], before[:5])
    state.respond(np.array([0]), np.array([[5]]), 10.0, dice=CLICK)  # a second click closes 0.3 of what is left
    assert state.trend_pull[0, 0] == pytest.approx(0.3 + 0.3 * 0.7)
    for _ in range(4):
        state.end_day()
    assert state.trend_pull[0, 0] == pytest.approx(0.51 / 2)  # half-life four days
    for _ in range(40):
        state.end_day()
    assert state.logits(np.array([0]), np.array([5]), 10.0)[0, 0] == pytest.approx(before[5], abs=1e-3)
    # Off the trend's peak a click pulls less (strength exp(-((day - peak) / width) ** 2)); a non-trend click not at all.
    fresh = UserState(truth)
    fresh.respond(np.array([1]), np.array([[5]]), 12.0, dice=CLICK)
    assert fresh.trend_pull[1, 0] == pytest.approx(0.3 * math.exp(-1.0))
    fresh.respond(np.array([0]), np.array([[3]]), 10.0, dice=CLICK)
    assert fresh.trend_pull[0, 0] == 0.0


def test_return_follows_how_satisfying_the_days_were():
    truth = _truth(return_sensitivity=0.5, engagement_half_life=1.0)  # memory 0.5: yesterday counts half
    state = UserState(truth)
    users = np.array([0, 1])
    assert state.return_probability(users).tolist() == [1.0, 1.0]  # new users come as often as they would
    # User 0 clicks twice, user 1 sees the same items and clicks nothing.
    state.respond(users, np.array([[0, 1], [0, 1]]), 1.0, dice=np.array([[0.0, 0.0], [1.0, 1.0]]))
    state.end_day()
    satisfied = 0.5 * 1.0 + 0.5 * (1 - math.exp(-2))
    assert state.engagement.tolist() == pytest.approx([satisfied, 0.5])
    assert state.return_probability(users).tolist() == pytest.approx([1 - 0.5 * (1 - satisfied), 0.75])
    assert state.visits(users, np.array([0.8, 0.8])).tolist() == [True, False]
    # A day without a visit changes nothing; another empty session lowers it further.
    state.end_day()
    assert state.engagement[1] == pytest.approx(0.5)
    state.respond(np.array([1]), np.array([[3]]), 2.0, dice=NO_CLICK)
    state.end_day()
    assert state.engagement[1] == pytest.approx(0.25)
    with pytest.raises(ValueError, match="dice"):
        state.visits(users)


def test_replay_takes_in_the_logged_days():
    truth = _truth(satiation=0.2)
    start = pd.Timestamp("2026-01-01", tz="UTC")
    logs = pd.DataFrame({
        "user_id": ["u0", "u0", "u0", "u1"],
        "item_id": ["i0", "i0", "i3", "i4"],
        "timestamp": [start + pd.Timedelta(seconds=100), start + pd.Timedelta(seconds=103), start + pd.Timedelta(seconds=101),
                      start + pd.Timedelta(days=1, seconds=50)],
        "event": ["impression", "click", "impression", "impression"],
        "position": [0.0, 0.0, 1.0, 0.0],
    })
    state = UserState(truth).replay(logs, days=2)
    assert state.clicked == {0}  # user 0 clicked item 0: fatigue
    decay = 0.5 ** (1 / 3)
    assert state.satiation[0, 0] == pytest.approx(1.1 * decay ** 2)  # one view + one click of taste 0, two days ago
    assert state.engagement[0] == pytest.approx(decay_engagement(1))
    assert state.copy().satiation is not state.satiation


def decay_engagement(clicks: int, half_life: float = 3.0) -> float:
    memory = 0.5 ** (1 / half_life)
    return memory * 1.0 + (1 - memory) * (1 - math.exp(-clicks))


def test_t_interval_against_a_hand_computed_case():
    # values 1, 2, 3, 4: mean 2.5, sample sd sqrt(5/3) = 1.290994; t(0.975, 3 dof) = 3.182446; n = 4.
    mean, half = t_interval([1.0, 2.0, 3.0, 4.0])
    assert mean == 2.5 and half == pytest.approx(3.182446 * 1.290994 / 2, rel=1e-6)
    # 90%: t(0.95, 3 dof) = 2.353363.
    assert t_interval([1.0, 2.0, 3.0, 4.0], level=0.9)[1] == pytest.approx(2.353363 * 1.290994 / 2, rel=1e-6)
    assert math.isnan(t_interval([3.0])[1])  # one seed: no interval
    with pytest.raises(ValueError, match="level"):
        t_interval([1.0, 2.0], level=95)


def test_simulator_with_behaviours_reports_the_long_run(tmp_path):
    """Arms without a trained model, two days: the behaviours reach the simulator's users and its report."""
    world = WorldConfig.with_behaviours(items=150, users=120, days=6, seed=2, images=False)
    generate_world(tmp_path, world, progress=False)
    config = SimulationConfig(warmup_days=4, days=2, seeds=(0,), arms=("most-popular", "oracle"), slate_size=8)
    run = run_seed(tmp_path, config, seed=0, progress=False)
    records = pd.DataFrame(run["records"])
    assert (records["returning_share"] <= 1).all() and (records["returning_share"] < 1).any()  # some users stayed away
    assert (records["impressions"] < records["active_users"] * 8).any()  # some left a slate early
    for arm, logs in run["logs"].items():  # only what users looked at is logged
        sim = logs[logs["timestamp"] >= pd.Timestamp("2026-01-05", tz="UTC")]
        assert (sim["event"] == "impression").sum() == records.loc[records["arm"] == arm, "impressions"].sum()
    assert (records.loc[records["arm"] == "oracle", "regret_clicks"] == 0).all()
    summary = summarise(records)
    for column in ("total_clicks_per_user", "returning_share_last_day", "temporal_diversity", "cold_clicks", "regret_clicks"):
        assert column in summary and np.isfinite(summary.loc["oracle", column])
    assert summary.loc["oracle", "total_clicks_per_user"] == pytest.approx(
        records.loc[records["arm"] == "oracle", "clicks"].sum() / world.users)
