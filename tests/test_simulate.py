import numpy as np
import pandas as pd
import pytest

from vistaste.bench.simulate import SimulationConfig, run_seed, simulate
from vistaste.bench.world import START, WorldConfig, generate_world

CONFIG = SimulationConfig(warmup_days=6, days=3, seeds=(0,), arms=("most-popular", "pretrained-kNN", "two-tower+DPP+trend", "oracle"),
                          initial_epochs=3, daily_epochs=1)


@pytest.fixture(scope="module")
def sim_world(tmp_path_factory):
    directory = tmp_path_factory.mktemp("sim_world")
    generate_world(directory, WorldConfig(items=300, users=200, days=10, seed=1, images=False), progress=False)
    return directory


@pytest.fixture(scope="module")
def run(sim_world):
    return run_seed(sim_world, CONFIG, seed=0, progress=False)


def _simulated(logs: pd.DataFrame) -> pd.DataFrame:
    return logs[logs["timestamp"] >= START + pd.Timedelta(days=CONFIG.warmup_days)]


def test_simulation_is_deterministic_for_a_seed(sim_world, run):
    again = run_seed(sim_world, CONFIG, seed=0, progress=False)
    assert pd.DataFrame(again["records"]).equals(pd.DataFrame(run["records"]))
    for arm in CONFIG.arms:
        pd.testing.assert_frame_equal(again["logs"][arm], run["logs"][arm])


def test_users_only_click_what_they_were_shown(run):
    for arm, logs in run["logs"].items():
        sim = _simulated(logs)
        clicks = sim[sim["event"] == "click"]
        shown = sim[sim["event"] == "impression"]
        assert len(clicks) > 0, arm
        joined = clicks.assign(shown_at=clicks["timestamp"] - pd.Timedelta(seconds=3)).merge(
            shown, left_on=["user_id", "item_id", "shown_at"], right_on=["user_id", "item_id", "timestamp"], how="left", indicator=True)
        assert (joined["_merge"] == "both").all(), arm


def test_arms_logs_do_not_leak_into_each_other(run):
    records = pd.DataFrame(run["records"])
    base_len = None
    slates = {}
    for arm, logs in run["logs"].items():
        sim = _simulated(logs)
        mine = records[records["arm"] == arm]
        # Each arm's log holds exactly the impressions and clicks it produced, nothing from another arm.
        assert (sim["event"] == "impression").sum() == mine["impressions"].sum()
        assert (sim["event"] == "click").sum() == mine["clicks"].sum()
        base = len(logs) - len(sim)
        assert base_len in (None, base)
        base_len = base
        slates[arm] = set(zip(sim["user_id"], sim["item_id"], sim["position"]))
    assert slates["oracle"] != slates["most-popular"] != slates["two-tower+DPP+trend"]


def test_oracle_has_the_highest_ctr_and_zero_regret(run):
    records = pd.DataFrame(run["records"])
    ctr = records.groupby("arm")["clicks"].sum() / records.groupby("arm")["impressions"].sum()
    assert ctr.idxmax() == "oracle"
    assert np.allclose(records.loc[records["arm"] == "oracle", "regret"], 0.0)
    assert (records.loc[records["arm"] != "oracle", "regret"] > 0).all()


def test_simulate_writes_report_and_plots(sim_world, tmp_path):
    config = SimulationConfig(warmup_days=7, days=2, seeds=(0, 1), arms=("most-popular", "oracle"))
    report = simulate(sim_world, tmp_path, config, progress=False)
    assert {row["arm"] for row in report["summary"]} == {"most-popular", "oracle"}
    assert all(np.isfinite(row["ctr_ci95"]) for row in report["summary"])  # two seeds give an interval
    for name in ("report.json", "report.md", "ctr_over_days.png", "diversity_vs_ctr.png"):
        assert (tmp_path / name).is_file()


def test_config_rejects_unknown_arms_and_missing_oracle():
    with pytest.raises(ValueError, match="unknown arms"):
        SimulationConfig(arms=("oracle", "magic"))
    with pytest.raises(ValueError, match="oracle arm is required"):
        SimulationConfig(arms=("most-popular",))


def test_two_tower_arms_say_what_they_ask_the_serving_path():
    config = SimulationConfig.with_variants({"two-tower+DPP0.7": {"method": "dpp", "trade_off": 0.7}},
                                            arms=("two-tower", "two-tower+DPP0.7", "two-tower+DPP+trend", "oracle"))
    options = config.serving_options()
    assert options["two-tower"] == {"method": "none", "trade_off": None, "trend_weight": 0.0}
    assert options["two-tower+DPP0.7"] == {"method": "dpp", "trade_off": 0.7, "trend_weight": 0.0}
    assert options["two-tower+DPP+trend"] == {"method": "dpp", "trade_off": None, "trend_weight": config.trend_weight}
    assert options["two-tower+adaptive"]["method"] == "adaptive"
    assert SimulationConfig(trade_off=0.8).serving_options()["two-tower+MMR"]["trade_off"] == 0.8  # one override for every arm
    with pytest.raises(ValueError, match="unknown arms"):
        SimulationConfig(arms=("two-tower+DPP0.7", "oracle"))  # a variant must be named in variants
