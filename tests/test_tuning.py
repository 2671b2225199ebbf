"""`vistaste tune`'s search: grid parsing, the choice (best validation, first on a tie), resuming a killed
search, and the shipped model's record of it. The trials' training is replaced here by a stand-in that
writes what `train` writes; test_cli runs the real search end to end."""
import dataclasses
import json

import pytest

from vistaste.towers import tuning
from vistaste.towers.config import TrainConfig


def test_parse_grid_casts_each_value_to_its_settings_type():
    grid = tuning.parse_grid(["temperature=0.05, 0.2", "output-dim=32,64", "recency_half_life_days=7,14"])
    assert grid == {"temperature": (0.05, 0.2), "output_dim": (32, 64), "recency_half_life_days": (7.0, 14.0)}
    assert all(type(v) is int for v in grid["output_dim"])
    assert tuning.parse_grid(["recency_half_life_days=0,14"]) == {"recency_half_life_days": (None, 14.0)}  # 0: off, as on the CLI


@pytest.mark.parametrize("entry, says", [
    ("temperature", "expected NAME=V1,V2"),
    ("seed=1,2", "cannot be tuned"),
    ("refit=all,none", "cannot be tuned"),
    ("temperature=0.1,warm", "must be a float"),
    ("temperature=0.1,0.1", "repeated"),
    ("output_dim=32.7", "must be a int"),
])
def test_parse_grid_names_the_bad_entry(entry, says):
    with pytest.raises(ValueError, match=says) as raised:
        tuning.parse_grid([entry])
    assert entry in str(raised.value)


def test_an_invalid_point_is_refused_before_any_training():
    with pytest.raises(ValueError, match="output_dim must be positive"):
        tuning.grid_points(TrainConfig(), {"output_dim": (16, 0)})
    with pytest.raises(ValueError, match="empty grid"):
        tuning.grid_points(TrainConfig(), {})


def test_grid_points_are_the_product_in_the_order_given():
    points = tuning.grid_points(TrainConfig(), {"temperature": (0.05, 0.1), "learning_rate": (1e-3, 3e-3)})
    assert points == [{"temperature": 0.05, "learning_rate": 1e-3}, {"temperature": 0.05, "learning_rate": 3e-3},
                      {"temperature": 0.1, "learning_rate": 1e-3}, {"temperature": 0.1, "learning_rate": 3e-3}]


def test_choose_takes_the_best_validation_and_the_first_on_a_tie():
    trials = [{"validation": 0.2, "n": 0}, {"validation": 0.3, "n": 1}, {"validation": 0.3, "n": 2}, {"validation": 0.1, "n": 3}]
    assert tuning.choose(trials)["n"] == 1


VALIDATION = {0.05: 0.11, 0.1: 0.14, 0.2: 0.13}  # the stand-in's validation score per temperature


@pytest.fixture
def fake_training(monkeypatch):
    """`train` replaced by a stand-in that saves config.json and history.json as `train` does (a known
    validation score per temperature) and counts its calls; `TrainedTwoTower.load` reads them back."""
    from vistaste.towers import trained as trained_module
    from vistaste.towers import training

    calls = []

    def fake_train(dataset_dir, out_dir, config, **kwargs):
        calls.append(config.temperature)
        out_dir.mkdir(parents=True, exist_ok=True)  # `train` replaces a stale directory atomically
        (out_dir / "config.json").write_text(json.dumps({"config": dataclasses.asdict(config)}))
        (out_dir / "weights.stand-in").write_text(str(config.temperature))
        history = {"best_val_ndcg@50": VALIDATION[config.temperature], "best_epoch": 3, "trend": {"weight": 0.0}}
        (out_dir / "history.json").write_text(json.dumps(history))

    class Loaded:
        def __init__(self, directory):
            self.config = TrainConfig.from_dict(json.loads((directory / "config.json").read_text())["config"])
            self.history = json.loads((directory / "history.json").read_text())

    monkeypatch.setattr(training, "train", fake_train)
    monkeypatch.setattr(trained_module.TrainedTwoTower, "load", classmethod(lambda cls, d: Loaded(d)))
    return calls


def test_tune_ships_the_best_trial_with_the_search_in_its_history(tmp_path, fake_training):
    out = tmp_path / "model"
    chosen = tuning.tune(tmp_path / "data", out, TrainConfig(seed=4), {"temperature": (0.05, 0.1, 0.2)}, log=lambda *a: None)
    assert fake_training == [0.05, 0.1, 0.2]
    assert chosen.config.temperature == 0.1 and chosen.config.seed == 4
    assert (out / "weights.stand-in").read_text() == "0.1"  # the chosen trial's own files
    record = json.loads((out / "history.json").read_text())["tuning"]
    assert record["chosen"] == {"temperature": 0.1}
    assert [t["validation"] for t in record["trials"]] == [0.11, 0.14, 0.13]
    assert not (tmp_path / ".model.tuning").exists()


def test_a_killed_search_resumes_with_the_trials_it_finished(tmp_path, fake_training):
    out, lines = tmp_path / "model", []
    work = tmp_path / ".model.tuning"
    # a search killed during its third trial: two trials finished, one with other settings (a different seed)
    from vistaste.towers import training

    training.train(None, work / "01-temperature=0.05", TrainConfig(temperature=0.05))
    training.train(None, work / "02-temperature=0.1", TrainConfig(temperature=0.1, seed=9))
    (work / "search.json").write_text(json.dumps(tuning._search_key(tmp_path / "data", None, None)))
    fake_training.clear()
    tuning.tune(tmp_path / "data", out, TrainConfig(), {"temperature": (0.05, 0.1, 0.2)}, log=lines.append)
    assert fake_training == [0.1, 0.2]  # the finished trial reused, the other-seed one retrained
    assert "reused" in lines[0] and "reused" not in lines[1]
    assert lines[-1].startswith("chose temperature 0.1")


def test_trials_of_another_dataset_are_never_reused(tmp_path, fake_training):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "interactions.csv").write_text("user_id,item_id,timestamp,event\n")
    tuning.tune(tmp_path / "a", tmp_path / "model", TrainConfig(), {"temperature": (0.05, 0.1)}, log=lambda *a: None)
    work = tmp_path / ".model.tuning"
    from vistaste.towers import training

    training.train(None, work / "01-temperature=0.05", TrainConfig(temperature=0.05))  # a killed search over dataset a
    (work / "search.json").write_text(json.dumps(tuning._search_key(tmp_path / "a", None, None)))
    fake_training.clear()
    (tmp_path / "a" / "interactions.csv").write_text("user_id,item_id,timestamp,event\nu1,i1,2026-01-01,click\n")  # new logs
    tuning.tune(tmp_path / "a", tmp_path / "model", TrainConfig(), {"temperature": (0.05, 0.1)}, log=lambda *a: None)
    assert fake_training == [0.05, 0.1]


def test_trials_whose_values_print_alike_keep_their_own_folders(tmp_path, fake_training):
    VALIDATION.update({0.1234567: 0.2, 0.1234568: 0.1})
    try:
        chosen = tuning.tune(tmp_path / "data", tmp_path / "model", TrainConfig(), {"temperature": (0.1234567, 0.1234568)},
                             log=lambda *a: None)
    finally:
        del VALIDATION[0.1234567], VALIDATION[0.1234568]
    assert chosen.config.temperature == 0.1234567
