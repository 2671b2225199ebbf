import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from vistaste.bench.world import WorldConfig, generate_world
from vistaste.data.split import SplitSpec, SplitTooSmall, split_log
from vistaste.towers import metrics
from vistaste.towers.features import PAD, ItemTable
from vistaste.towers.item_tower import ItemTower
from vistaste.towers.model import TwoTowerModel
from vistaste.towers.training import TrainConfig, TrainedTwoTower, train
from vistaste.towers.user_tower import UserTower


def _toy_model(logq: bool, strength: float = 1.0) -> TwoTowerModel:
    return TwoTowerModel(UserTower(["a"], 2), ItemTower(["x"], 2), temperature=1.0, logq_correction=logq, remove_accidental_hits=True,
                         logq_strength=strength)


def test_logq_correction_on_a_hand_computed_batch():
    # Two users, two items, unit vectors: scores = [[1, 0], [0, 1]] (temperature 1).
    users = tf.constant([[1.0, 0.0], [0.0, 1.0]])
    items = tf.constant([[1.0, 0.0], [0.0, 1.0]])
    ids = tf.constant(["x", "y"])
    p = tf.constant([0.5, 0.25])
    # Without correction each row's loss is -log(e^1 / (e^1 + e^0)) = log(1 + e^-1).
    plain = _toy_model(False).task(users, items, candidate_ids=ids, compute_metrics=False)
    np.testing.assert_allclose(plain.numpy(), 2 * np.log1p(np.exp(-1)), rtol=1e-5)
    # With logQ: logits become s - log p = [[1 - log .5, -log .25], [-log .5, 1 - log .25]].
    corrected = _toy_model(True).task(users, items, candidate_sampling_probability=p, candidate_ids=ids, compute_metrics=False)
    logits = np.array([[1, 0], [0, 1]]) - np.log([0.5, 0.25])[None, :]
    expected = -(np.diag(logits) - np.log(np.exp(logits).sum(axis=1))).sum()
    np.testing.assert_allclose(corrected.numpy(), expected, rtol=1e-5)
    assert corrected.numpy() != pytest.approx(plain.numpy())
    # logq_strength 2 (TrainConfig.logq_strength): logits s - 2 log p.
    model = _toy_model(True, strength=2.0)
    doubled = model.task(users, items, candidate_sampling_probability=model.correction(p), candidate_ids=ids, compute_metrics=False)
    logits = np.array([[1, 0], [0, 1]]) - 2 * np.log([0.5, 0.25])[None, :]
    np.testing.assert_allclose(doubled.numpy(), -(np.diag(logits) - np.log(np.exp(logits).sum(axis=1))).sum(), rtol=1e-5)
    assert _toy_model(False, strength=2.0).correction(p) is None


def test_accidental_hits_are_removed():
    users = tf.constant([[1.0, 0.0], [0.0, 1.0]])
    items = tf.constant([[1.0, 0.0], [0.0, 1.0]])
    same = tf.constant(["x", "x"])  # the same item twice: neither copy is a negative for the other row
    loss = _toy_model(False).task(users, items, candidate_ids=same, compute_metrics=False)
    np.testing.assert_allclose(loss.numpy(), 0.0, atol=1e-5)


def _hand_log():
    """10 clicks by u1/u2 on days 1..10 (one a day), plus an impression on day 9.5."""
    rows = [("u1" if d % 2 else "u2", f"i{d}", pd.Timestamp("2026-01-01", tz="UTC") + pd.Timedelta(days=d), "click") for d in range(1, 11)]
    rows.append(("u1", "i0", pd.Timestamp("2026-01-01", tz="UTC") + pd.Timedelta(days=9.5), "impression"))
    return pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "event"])


def test_split_rules_on_hand_made_timestamps():
    logs = _hand_log()
    day = lambda d: pd.Timestamp("2026-01-01", tz="UTC") + pd.Timedelta(days=d)  # noqa: E731
    # Fraction: the last 20% of the 10 clicks (days 9, 10) are test; the impression at 9.5 is after the cut too.
    split = split_log(logs, SplitSpec(test_fraction=0.2, val_fraction=0.25))
    assert split.test_start == day(9) and sorted(split.test["item_id"]) == ["i0", "i10", "i9"]
    # Validation: the last 25% of the 8 clicks before the cut (days 7, 8).
    assert split.val_start == day(7) and sorted(split.validation["item_id"]) == ["i7", "i8"]
    assert len(split.train) + len(split.validation) + len(split.test) == len(logs)
    train, validation, test = split.train["timestamp"], split.validation["timestamp"], split.test["timestamp"]
    assert train.max() < validation.min() <= validation.max() < test.min()
    # Days and start: the same cut stated two other ways.
    by_days = split_log(logs, SplitSpec(test_days=1.5, val_fraction=0.25))
    assert by_days.test_start == day(8.5) and sorted(by_days.test["item_id"]) == ["i0", "i10", "i9"]
    by_start = split_log(logs, SplitSpec(test_start="2026-01-10", val_fraction=0.25))
    assert by_start.test_start == day(9) and len(by_start.test) == 3
    # Leave-last-1: each user's last click (u1: day 9, u2: day 10) and what follows; validation the one before.
    per_user = split_log(logs, SplitSpec(leave_last=1))
    assert sorted(per_user.test["item_id"]) == ["i0", "i10", "i9"]
    assert sorted(per_user.validation["item_id"]) == ["i7", "i8"]
    assert "leave-last-1" in per_user.describe()["protocol"]


def test_split_rules_refuse_what_cannot_work():
    logs = _hand_log()
    with pytest.raises(ValueError, match="one test rule"):
        SplitSpec(test_fraction=0.2, test_days=3)
    with pytest.raises(ValueError, match="val_fraction"):
        SplitSpec(val_fraction=0)
    with pytest.raises(SplitTooSmall, match="nothing left before the test period"):
        split_log(logs, SplitSpec(test_days=30))
    with pytest.raises(SplitTooSmall, match="no user has more than"):
        split_log(logs, SplitSpec(leave_last=5))


def test_configs_carry_the_split_rule_whole():
    from vistaste.towers.finetune_config import FinetuneConfig

    rule = dict(test_start="2026-01-10", val_fraction=0.3, min_val_users=7)
    for config in (TrainConfig(**rule), FinetuneConfig(**rule)):
        spec = config.split_spec()
        assert spec == SplitSpec(**rule) and spec.test_start == str(pd.Timestamp("2026-01-10"))
    assert TrainConfig().split_spec().test_fraction == 0.2  # no rule given: the default one
    with pytest.raises(ValueError, match="one test rule"):
        TrainConfig(leave_last=1, test_days=2)


def test_metrics_match_hand_computed_values():
    top = np.array([[3, 1, 2, 0], [0, 1, 2, 3]])
    relevant = [np.array([1, 0]), np.array([9])]
    # user 0: hits at ranks 2 and 4; user 1: none.
    assert metrics.recall(top, relevant, 2) == pytest.approx((1 / 2 + 0) / 2)
    assert metrics.recall(top, relevant, 4) == pytest.approx((2 / 2 + 0) / 2)
    dcg = 1 / np.log2(3) + 1 / np.log2(5)
    ideal = 1 + 1 / np.log2(3)
    assert metrics.ndcg(top, relevant, 4) == pytest.approx((dcg / ideal + 0) / 2)
    assert metrics.mrr(top, relevant) == pytest.approx((1 / 2 + 0) / 2)
    assert metrics.coverage(top, 8, 2) == pytest.approx(3 / 8)  # top-2 lists {3, 1} and {0, 1}
    vectors = np.array([[1.0, 0], [0, 1.0], [1.0, 0], [1.0, 0]])
    # list 0 top-2 = items 3, 1 -> orthogonal -> distance 1; list 1 top-2 = items 0, 1 -> 1.
    assert metrics.intra_list_diversity(top, vectors, 2) == pytest.approx(1.0)
    scores = np.array([[0.1, 0.9, -np.inf, 0.5]])
    assert metrics.top_k(scores, 3).tolist() == [[1, 3, 0]]


def test_item_table_rejects_nan_and_unknown_ids():
    with pytest.raises(ValueError, match=r"'b' \(row 1\) contains NaN"):
        ItemTable.build(np.array(["a", "b"]), np.array([[1.0, 2.0], [np.nan, 1.0]]))
    table = ItemTable.build(np.array(["a", "b"]), np.ones((2, 2)))
    with pytest.raises(KeyError, match="'zz'"):
        table.rows(["a", "zz"])
    assert table.rows(["a", "zz"], unknown="pad").tolist() == [0, PAD]


@pytest.fixture(scope="module")
def trained_world(tmp_path_factory):
    """A no-images world (attribute vectors) and a model trained on it: fast and fixed-seed."""
    directory = tmp_path_factory.mktemp("train_world")
    # The world before the behaviours (issue 13), where these margins were measured: on the default world users
    # also follow trends, and most-popular closes part of the gap (README, built-in world results).
    generate_world(directory, WorldConfig.without_behaviours(items=600, users=500, days=21, seed=2, images=False), progress=False)
    config = TrainConfig(epochs=12, batch_size=256, test_days=4, patience=4)
    trained = train(directory, directory / "model", config, verbose=False)
    return directory, trained


def test_trained_model_beats_popularity_and_knows_cold_items(trained_world):
    from vistaste.bench.truth import oracle_scorers
    from vistaste.towers.evaluation import evaluate

    directory, trained = trained_world
    results = evaluate(directory, {"two-tower": directory / "model"}, out_dir=directory / "report", include_two_tower=False,
                       log=lambda *a: None, extra_scorers=oracle_scorers(directory))
    warm = results["slices"]["warm users"]["methods"]
    assert warm["two-tower"]["recall@50"] > 1.5 * warm["most-popular"]["recall@50"], warm
    assert warm["oracle"]["recall@50"] > warm["random"]["recall@50"]
    assert {"most-popular (last 7 days)", "item-kNN", "ALS (implicit)", "content-kNN"} <= set(warm)
    assert all(0 < v["coverage@10"] <= v["coverage@50"] <= 1 for v in warm.values())
    for name in ("report.json", "report.md", "recall_at_k.png", "training_curves.png"):
        assert (directory / "report" / name).is_file()
    # The report states its protocol: the split rule, who is evaluable, the candidates.
    report = (directory / "report" / "report.md").read_text()
    assert "global temporal split: the last 4 days are test" in report and "evaluable users" in report
    assert "every item the user clicked or saved before" in report
    # Cold start: an item id never seen in training still gets a unit tower vector from its features alone,
    # and (with a collaborative term) the ALS factors its content maps to: those of a known item with the same content.
    new_item = ItemTable(np.array(["brand-new"]), trained.table.vectors[:1], trained.table.tags[:1], trained.table.tag_vocabulary)
    vector = trained.item_vectors(new_item)
    assert vector.shape == (1, trained.dim)
    assert np.linalg.norm(vector[:, :trained.config.output_dim]) == pytest.approx(1.0, abs=1e-5)
    if trained.collaborative is not None:
        from vistaste.towers.collaborative import content

        mapped = content(new_item)[0] @ trained.collaborative.content_map
        np.testing.assert_allclose(vector[0, trained.config.output_dim:], mapped, atol=1e-5)


def test_the_trend_boost_is_chosen_within_the_breadth_floor_and_the_record_says_so(trained_world):
    from vistaste.towers import trend_boost

    directory, trained = trained_world
    trend = trained.history["trend"]
    assert trend["chosen_by"] == "validation ndcg@50 with top-10 coverage >= 3x most-popular's" == (
        f"validation ndcg@50 with top-10 coverage >= {trained.config.min_breadth:g}x most-popular's")
    chosen = [r for r in trend["validation"] if r["chosen"]]
    assert len(chosen) == 1 and chosen[0]["allowed"] and chosen[0]["weight"] == pytest.approx(trend["weight"])
    gain = 1 + trend_boost.MIN_RELATIVE_GAIN
    better = [r for r in trend["validation"][1:] if r["value"] > max(chosen[0]["value"], trend["validation"][0]["value"] * gain)]
    assert not [r for r in better if r["allowed"]]  # nothing allowed scored higher than the choice


def test_new_user_with_empty_or_short_history_gets_a_vector(trained_world):
    _, trained = trained_world
    history = np.full((2, trained.config.history_length), PAD)
    history[1, -2:] = [0, 1]
    vectors = trained.user_vectors(["never-seen", "also-new"], history)
    assert np.isfinite(vectors).all() and vectors.shape == (2, trained.dim)
    # The towers' part is a unit vector; a collaborative term (if any) follows: none without history.
    np.testing.assert_allclose(np.linalg.norm(vectors[:, :trained.config.output_dim], axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(vectors[0, trained.config.output_dim:], 0.0)
    assert not np.allclose(vectors[0], vectors[1])  # the history changes the recommendation


def test_saved_model_reloads_identically(trained_world):
    directory, trained = trained_world
    loaded = TrainedTwoTower.load(directory / "model")
    history = np.full((3, trained.config.history_length), PAD)
    history[:, -1] = [3, 4, 5]
    users = np.array(["u000001", "u000002", "nobody"])
    np.testing.assert_allclose(loaded.user_vectors(users, history), trained.user_vectors(users, history), atol=1e-6)
    np.testing.assert_allclose(loaded.item_vectors(), trained.item_vectors(), atol=1e-6)
    assert loaded.history["train_examples"] == trained.history["train_examples"]


def test_killed_training_resumes_from_last_epoch(tmp_path):
    generate_world(tmp_path / "w", WorldConfig(items=200, users=150, days=12, seed=4, images=False), progress=False)
    config = TrainConfig(epochs=3, batch_size=128, test_days=3, patience=10, min_val_users=5)
    messages = []

    def killing_log(message):
        messages.append(message)
        if message.startswith("epoch   2/"):
            raise KeyboardInterrupt("killed during epoch 2 bookkeeping")

    with pytest.raises(KeyboardInterrupt):
        train(tmp_path / "w", tmp_path / "model", config, log=killing_log)
    assert not (tmp_path / "model").exists()
    messages.clear()
    trained = train(tmp_path / "w", tmp_path / "model", config, log=messages.append)
    assert messages[0].startswith("resuming after epoch 1")
    assert [e["epoch"] for e in trained.history["epochs"]] == [1, 2, 3]
    assert not (tmp_path / ".model.checkpoints").exists()


def test_unknown_item_in_log_is_a_clear_error(tmp_path):
    from vistaste.data.validation import DataValidationError

    generate_world(tmp_path, WorldConfig(items=100, users=60, days=10, seed=1, images=False), progress=False)
    logs = pd.read_parquet(tmp_path / "interactions.parquet")
    logs.loc[5, "item_id"] = "ghost"
    logs.to_parquet(tmp_path / "interactions.parquet")
    with pytest.raises(DataValidationError, match=r"row 5, column 'item_id': unknown item id 'ghost'"):
        train(tmp_path, tmp_path / "model", TrainConfig(epochs=1, test_days=2))


def test_recency_weights_halve_every_half_life_and_average_one():
    from vistaste.towers.training import recency_weights

    end = pd.Timestamp("2026-03-01", tz="UTC")
    pos = pd.DataFrame({"user_id": ["u"] * 3, "timestamp": [end - pd.Timedelta(days=28), end - pd.Timedelta(days=14), end]})
    weights = recency_weights(pos, TrainConfig(recency_half_life_days=14.0))
    raw = np.array([0.25, 0.5, 1.0])
    np.testing.assert_allclose(weights, raw / raw.mean())
    assert recency_weights(pos, TrainConfig(recency_half_life_days=None)) is None
    with pytest.raises(ValueError, match="recency_half_life_days"):
        TrainConfig(recency_half_life_days=0)


def test_recency_is_measured_from_each_users_last_click_in_a_leave_last_split():
    from vistaste.towers.training import recency_weights

    end = pd.Timestamp("2026-03-01", tz="UTC")
    pos = pd.DataFrame({"user_id": ["old", "old", "new", "new"],
                        "timestamp": [end - pd.Timedelta(days=114), end - pd.Timedelta(days=100), end - pd.Timedelta(days=14), end]})
    per_user = recency_weights(pos, TrainConfig(recency_half_life_days=14.0, leave_last=1))
    np.testing.assert_allclose(per_user, np.array([0.5, 1.0, 0.5, 1.0]) / 0.75)  # each user's last click weighs most
    global_clock = recency_weights(pos, TrainConfig(recency_half_life_days=14.0, test_fraction=0.2))
    assert global_clock[0] < 1e-2 < global_clock[2]


def test_mixed_negatives_join_the_softmax_with_their_mixed_probability():
    # Mixed negative sampling (TrainConfig.uniform_negatives): the input pipeline adds n catalog rows drawn
    # uniformly; every candidate's sampling probability is p + n / (b N), and the loss is the softmax over the
    # batch's b items and the n drawn ones, checked here against numpy.
    from vistaste.towers.trained import build_model
    from vistaste.towers.training import _dataset

    rng = np.random.default_rng(0)
    n_items, b, n = 7, 4, 5
    table = ItemTable(np.array([f"i{j}" for j in range(n_items)]), rng.normal(size=(n_items, 3)).astype(np.float32),
                      np.zeros((n_items, 1), np.float32), ["t"])
    item_rows = np.array([0, 0, 1, 2])  # item 0 twice, items 3-6 never clicked
    probability = np.array([0.5, 0.5, 0.25, 0.25])
    data = _dataset(np.array(["u0", "u1", "u2", "u3"]), np.full((4, 2), PAD), item_rows, probability, table, b, seed=0, uniform_negatives=n)
    batch = next(iter(data))
    negatives = batch["negatives"]["row"].numpy()
    assert negatives.shape == (n,) and ((0 <= negatives) & (negatives < n_items)).all()
    per_row = np.zeros(n_items)
    per_row[[0, 1, 2]] = [0.5, 0.25, 0.25]
    extra = n / (b * n_items)
    rows = batch["item"]["row"].numpy()
    np.testing.assert_allclose(batch["item"]["sampling_probability"].numpy(), per_row[rows] + extra, rtol=1e-6)
    np.testing.assert_allclose(batch["negatives"]["sampling_probability"].numpy(), per_row[negatives] + extra, rtol=1e-6)
    later = [step["negatives"]["row"].numpy() for step in data.repeat(3)]  # epochs: drawn again each time
    assert not all(np.array_equal(later[0], other) for other in later[1:])

    config = TrainConfig(temperature=0.5, use_user_id=False, use_item_id=False, use_tags=False, output_dim=3)
    model = build_model(config, [], [])
    loss = model.compute_loss(batch).numpy()
    users = model.user_tower(batch["user"]).numpy()
    candidates = np.concatenate([model.item_tower(batch["item"]).numpy(), model.item_tower(batch["negatives"]).numpy()])
    candidate_rows = np.concatenate([rows, negatives])
    logits = users @ candidates.T / 0.5 - np.log(np.concatenate([per_row[rows], per_row[negatives]]) + extra)[None, :]
    for i in range(b):  # accidental hits: other copies of the user's own item are not negatives
        hits = (candidate_rows == rows[i]) & (np.arange(b + n) != i)
        logits[i, hits] = -np.inf
    expected = -(np.diag(logits) - np.log(np.exp(logits).sum(axis=1))).sum()
    np.testing.assert_allclose(loss, expected, rtol=1e-4)


def test_steps_per_call_change_nothing_but_speed(trained_world):
    """A fit runs the same steps in the same order at one step per call as at STEPS_PER_EXECUTION (what
    `steps_per_execution` chooses between by the fit's length): the same seed gives the same weights."""
    import tf_keras

    from vistaste.towers.trained import build_model
    from vistaste.towers.training import (
        LOOP_MIN_STEPS,
        STEPS_PER_EXECUTION,
        _dataset,
        compile_model,
        prepare,
        steps_per_execution,
        training_examples,
        vocabularies,
    )

    assert steps_per_execution(LOOP_MIN_STEPS * 512, 512, 1) == STEPS_PER_EXECUTION
    assert steps_per_execution((LOOP_MIN_STEPS - 1) * 512, 512, 1) == 1
    assert steps_per_execution(LOOP_MIN_STEPS * 256, 512, 2) == STEPS_PER_EXECUTION  # steps over every epoch
    directory, _ = trained_world
    config = TrainConfig(batch_size=256, test_days=4)
    split, _, table, pca = prepare(directory, config)
    pos, item_rows, history_rows, probability, _ = training_examples(split.train, table, config.history_length)
    weights = []
    for per_call in (1, STEPS_PER_EXECUTION):
        tf_keras.utils.set_random_seed(0)
        trained = TrainedTwoTower(config, build_model(config, *vocabularies(pos, config)), table, pca, {}).build()
        compile_model(trained.model, config, per_call)
        trained.model.fit(_dataset(pos["user_id"].to_numpy(), history_rows, item_rows, probability, table, config.batch_size, 0),
                          epochs=1, verbose=0)
        weights.append(trained.model.get_weights())
    assert len(pos) % config.batch_size  # a short last batch: the loop's last call runs only the steps left
    for a, b in zip(*weights):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
