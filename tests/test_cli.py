"""Every `vistaste` command that had no test, end to end on a small world without images (world ->
train -> evaluate -> export -> recommend, and simulate), checking what each one promises to write or say."""
import json

import pandas as pd
import pytest
from typer.testing import CliRunner

from vistaste.apps.cli import app

runner = CliRunner()


def _run(*args: str):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    _run("world", "--out", root / "world", "--items", 150, "--users", 120, "--days", 12, "--seed", 2, "--no-images")
    train_out = _run("train", root / "world", "--out", root / "model", "--epochs", 2, "--min-val-users", 3, "--test-fraction", 0.2)
    return root, train_out


def test_train_writes_a_model_and_says_what_it_chose(pipeline):
    root, output = pipeline
    history = json.loads((root / "model" / "history.json").read_text())
    assert "the last 20% of positive events are test" in output and f"best epoch {history['best_epoch']}" in output
    from vistaste.data.trends import TrendSetting

    chosen = TrendSetting.from_dict(history["trend"])
    said = f"trend boost: {chosen.describe()}" if chosen.weight > 0 else "trend boost: none (none helped on validation)"
    assert said in output and history["trend"]["chosen_by"].startswith("validation")
    assert history["refit"] == "before-test" and pd.Timestamp(history["trained_until"]) < pd.Timestamp(history["split"]["test_start"])


def test_evaluate_prints_the_protocol_and_writes_the_report(pipeline):
    root, _ = pipeline
    output = _run("evaluate", root / "world", "--model", root / "model", "--out", root / "report", "--skip-id-two-tower")
    assert "the last 20% of positive events are test" in output and "candidates: every item existing" in output
    report = json.loads((root / "report" / "report.json").read_text())
    warm = report["slices"]["warm users"]["methods"]
    assert {"random", "most-popular", "ALS (implicit)", "model", "oracle"} <= set(warm)  # the model is named after its folder
    assert warm["oracle"]["recall@50"] >= warm["random"]["recall@50"]
    assert "## Protocol" in (root / "report" / "report.md").read_text()


def test_export_writes_a_version_and_recommend_reads_it(pipeline):
    root, _ = pipeline
    _run("export", root / "model", "--data", root / "world", "--out", root / "exported", "--k", 50)
    assert (root / "exported" / "current").read_text().strip() == "1"
    card = json.loads((root / "exported" / "1" / "model_card.json").read_text())
    assert card["index"]["k"] == 50 and "trend" in card["training"]["history"]
    users = pd.read_parquet(root / "world" / "interactions.parquet")["user_id"]
    user = users.value_counts().index[0]
    output = _run("recommend", "--user", user, "-k", 5, "--models", root / "exported")
    shown = [token for token in output.split() if token.startswith("i00")]
    assert len(shown) == 5
    from vistaste.serving.recommender import Recommender

    expected = Recommender(root / "exported").recommend(user, 5, method="adaptive").items["item_id"].tolist()
    adaptive = _run("recommend", "--user", user, "-k", 5, "--models", root / "exported", "--method", "adaptive")
    assert [token for token in adaptive.split() if token.startswith("i00")] == expected == shown  # adaptive is the default
    bogus = runner.invoke(app, ["recommend", "--user", user, "--models", str(root / "exported"), "--method", "fancy"])
    assert bogus.exit_code == 2 and "Invalid value for '--method'" in bogus.output and "Traceback" not in bogus.output


def test_recommend_method_choices_and_default_come_from_the_reranker():
    import typing

    import typer

    from vistaste.serving.rerank import DEFAULT_METHOD, METHOD_HELP, METHODS

    option = next(p for p in typer.main.get_command(app).commands["recommend"].params if p.name == "method")
    assert option.default == DEFAULT_METHOD == "adaptive" and typing.get_args(option.type_descriptor.annotation) == METHODS
    assert set(METHOD_HELP) == set(METHODS) and all(f"{name}: {text}" in option.help for name, text in METHOD_HELP.items())
    assert "docs/diversity.md" in option.help


def test_a_bad_split_option_is_a_clear_error_not_a_traceback(pipeline):
    root, _ = pipeline
    result = runner.invoke(app, ["train", str(root / "world"), "--out", str(root / "m2"), "--test-fraction", "0.2", "--test-days", "3"])
    assert result.exit_code == 2 and "error:" in result.output and "Traceback" not in result.output


def test_simulate_prints_every_arm_and_writes_its_report(pipeline):
    root, _ = pipeline
    output = _run("simulate", root / "world", "--out", root / "sim", "--days", 1, "--warmup-days", 8, "--seeds", 1,
                  "--arms", "most-popular,oracle", "--slate-size", 6)
    assert "most-popular" in output and "oracle" in output
    report = json.loads((root / "sim" / "report.json").read_text())
    assert [row["arm"] for row in report["summary"]] == ["most-popular", "oracle"]


def test_tune_takes_every_train_option_and_a_grid():
    import typer

    commands = typer.main.get_command(app).commands
    train_options = {p.name: p.default for p in commands["train"].params if p.name != "distributed"}
    tune_options = {p.name: p.default for p in commands["tune"].params}
    assert tune_options.pop("grid") == [] and tune_options == train_options


def test_tune_refuses_an_option_the_grid_would_override(pipeline):
    root, _ = pipeline
    result = runner.invoke(app, ["tune", str(root / "world"), "--out", str(root / "t"), "--temperature", "0.3"])
    assert result.exit_code == 2 and "--temperature given and also searched by the grid" in result.output
    assert "Traceback" not in result.output and not (root / "t").exists()


@pytest.mark.e2e  # a whole search (two trials and the shipped refit), run twice
def test_tune_chooses_on_validation_and_never_reads_the_test_period(pipeline, tmp_path):
    import shutil

    import numpy as np

    root, _ = pipeline
    cut = json.loads((root / "model" / "history.json").read_text())["split"]["test_start"]
    options = ["--grid", "temperature=0.05,0.3", "--epochs", 2, "--min-val-users", 3, "--test-start", cut]
    output = _run("tune", root / "world", "--out", tmp_path / "tuned", *options)
    history = json.loads((tmp_path / "tuned" / "history.json").read_text())
    trials = history["tuning"]["trials"]
    assert [t["settings"]["temperature"] for t in trials] == [0.05, 0.3]
    best = max(trials, key=lambda t: t["validation"])
    assert history["tuning"]["chosen"] == best["settings"]
    assert json.loads((tmp_path / "tuned" / "config.json").read_text())["config"]["temperature"] == best["settings"]["temperature"]
    assert f"chose temperature {best['settings']['temperature']:g}" in output and output.count("trial ") == 2
    assert history["refit"] == "before-test" and not (tmp_path / ".tuned.tuning").exists()

    # The same log with every test-period click moved to another item: the search scores and chooses the same.
    shutil.copytree(root / "world", tmp_path / "altered")
    events = pd.read_parquet(tmp_path / "altered" / "interactions.parquet")
    after = events["timestamp"] >= pd.Timestamp(cut)
    assert after.sum() > 20
    # other items, drawn with replacement: the test period's item popularity changes too
    events.loc[after, "item_id"] = np.random.default_rng(0).choice(events["item_id"].unique()[:20], after.sum())
    events.to_parquet(tmp_path / "altered" / "interactions.parquet")
    # The scores and the choice come before the refit: skipping it here keeps the test short.
    _run("tune", tmp_path / "altered", "--out", tmp_path / "tuned-altered", *options, "--refit", "none")
    altered = json.loads((tmp_path / "tuned-altered" / "history.json").read_text())["tuning"]
    assert [t["validation"] for t in altered["trials"]] == pytest.approx([t["validation"] for t in trials], abs=1e-6)
    assert altered["chosen"] == history["tuning"]["chosen"]
