"""One code path from training to serving: the seen-item policy on every path (a user with 700 consumed
items never gets one back), the served ranking equals the one evaluation measures, and a user's features
are built identically by training's input pipeline and by the exported model."""
import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from vistaste.data.seen import SeenPolicy
from vistaste.data.split import SplitSpec, split_log
from vistaste.serving.export import export
from vistaste.serving.recommender import Recommender
from vistaste.towers.features import ItemTable
from vistaste.towers.slices import build_slices
from vistaste.towers.training import TrainConfig, train

HEAVY = "heavy"
N_ITEMS = 1000
START = pd.Timestamp("2026-01-01", tz="UTC")


def _dataset(directory):
    """1,000 items with random 8-d vectors; 80 users with 12 clicks each over 30 days; one user with 700."""
    rng = np.random.default_rng(0)
    items = np.array([f"i{n:04d}" for n in range(N_ITEMS)])
    rows = []
    for u in range(80):
        for item in rng.choice(N_ITEMS, 12, replace=False):
            rows.append((f"u{u:03d}", items[item], START + pd.Timedelta(hours=float(rng.uniform(0, 720))), "click"))
    heavy_items = rng.choice(N_ITEMS, 700, replace=False)
    for n, item in enumerate(heavy_items):
        rows.append((HEAVY, items[item], START + pd.Timedelta(hours=n * 720 / 700), "click"))
    logs = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "event"]).sort_values("timestamp")
    directory.mkdir(parents=True, exist_ok=True)
    logs.to_parquet(directory / "interactions.parquet", index=False)
    pd.DataFrame({"item_id": items, "title": [f"item {n}" for n in range(N_ITEMS)]}).to_parquet(directory / "catalog.parquet", index=False)
    vectors = pd.DataFrame({"item_id": items, "vector": list(rng.normal(size=(N_ITEMS, 8)).astype(np.float32))})
    vectors.to_parquet(directory / "item_vectors.parquet", index=False)
    return logs, set(items[heavy_items])


@pytest.fixture(scope="session")
def heavy(tmp_path_factory):
    root = tmp_path_factory.mktemp("heavy")
    logs, consumed = _dataset(root / "data")
    config = TrainConfig(epochs=1, batch_size=256, min_val_users=1, refit="all")
    train(root / "data", root / "model", config, verbose=False)
    export(root / "model", root / "data", root / "models", k=50)
    return root, logs, consumed


def test_policy_rules_on_hand_made_events():
    now = pd.Timestamp("2026-01-10", tz="UTC")
    times = pd.to_datetime(["2025-01-01T00:00", "2026-01-09T12:00", "2026-01-01T00:00", "2026-01-09T23:00", "2026-01-11T00:00"], utc=True)
    items = ["old-click", "fresh-shown", "old-shown", "fresh-click", "future-click"]
    events = ["click", "impression", "impression", "save", "click"]
    assert SeenPolicy().seen_ids(items, events, times, now) == {"old-click", "fresh-shown", "fresh-click"}
    assert SeenPolicy(impression_window_hours=0).seen_ids(items, events, times, now) == {"old-click", "fresh-click"}
    assert SeenPolicy("recent", window_hours=48).seen_ids(items, events, times, now) == {"fresh-shown", "fresh-click"}
    with pytest.raises(ValueError, match="seen-item mode"):
        SeenPolicy("forever")


def test_evaluation_excludes_every_consumed_item(heavy):
    root, logs, consumed = heavy
    split = split_log(logs, SplitSpec(test_fraction=0.2))
    table = ItemTable.build(np.array(sorted(logs["item_id"].unique().tolist() + [])), np.zeros((len(logs["item_id"].unique()), 2)))
    warm = build_slices(split, table, 20)[0]
    row = list(warm.user_ids).index(HEAVY)
    before = set(pd.concat([split.train, split.validation]).query("user_id == @HEAVY")["item_id"])
    assert len(before) > 500 and set(table.ids[warm.exclude[row]]) == before  # all of them, not the last 20
    assert not set(table.ids[warm.relevant[row]]) & before


def test_python_and_signature_never_return_consumed_items(heavy):
    root, _, consumed = heavy
    recommender = Recommender(root / "models")
    slate = recommender.recommend(HEAVY, k=50, method="none")
    assert len(slate.items) == 50 and not set(slate.items["item_id"]) & consumed
    # The exported signature with an explicit exclusion list: k unseen items even though the index holds
    # only 50 candidates per query and most of them are consumed (the exact fallback).
    import tensorflow as tf

    out = recommender.model.signatures["recommend_unseen"](
        user_id=tf.constant([HEAVY]), history=tf.constant([recommender.stored_history(HEAVY)]),
        exclude=tf.constant([sorted(consumed)]), k=tf.constant(120))
    ids = [b.decode() for b in out["item_ids"].numpy()[0]]
    assert len(ids) == 120 and len(set(ids)) == 120 and not set(ids) & consumed
    scores = out["scores"].numpy()[0]
    assert (np.diff(scores) <= 1e-6).all()
    # Reference for the model's order (``candidates``, no trend boost): the whole catalog ranked with
    # nothing excluded, consumed items then dropped, gives the same unseen top items.
    model_only = recommender.model.signatures["candidates"](
        user_id=tf.constant([HEAVY]), history=tf.constant([recommender.stored_history(HEAVY)]),
        exclude=tf.constant([sorted(consumed)]), k=tf.constant(120))
    everything = recommender.model.signatures["candidates"](
        user_id=tf.constant([HEAVY]), history=tf.constant([recommender.stored_history(HEAVY)]), exclude=tf.constant([[""]]),
        k=tf.constant(N_ITEMS))
    ranked = [b.decode() for b in everything["item_ids"].numpy()[0] if b.decode() not in consumed][:120]
    assert [b.decode() for b in model_only["item_ids"].numpy()[0]][:100] == ranked[:100]
    # More than the unseen catalog: the tail is padded with "" and -inf.
    out = recommender.model.signatures["recommend_unseen"](
        user_id=tf.constant([HEAVY]), history=tf.constant([[""]]), exclude=tf.constant([sorted(consumed)]), k=tf.constant(N_ITEMS))
    ids = np.array([b.decode() for b in out["item_ids"].numpy()[0]])
    assert (ids != "").sum() == N_ITEMS - len(consumed) and np.isinf(out["scores"].numpy()[0][ids == ""]).all()


def test_http_and_cli_never_return_consumed_items(heavy):
    from vistaste.apps.cli import app
    from vistaste.serving.service import create_app
    from vistaste.serving.settings import Settings

    root, _, consumed = heavy
    with TestClient(create_app(Settings(models_dir=root / "models", feedback_db=root / "fb.sqlite"))) as client:
        body = client.get(f"/recommendations/{HEAVY}", params={"k": 40}).json()
        assert len(body["items"]) == 40 and not {i["item_id"] for i in body["items"]} & consumed
    result = CliRunner().invoke(app, ["recommend", "--user", HEAVY, "-k", "30", "--models", str(root / "models")])
    assert result.exit_code == 0, result.output
    shown = {token for token in result.output.split() if token.startswith("i") and token[1:].isdigit()}
    assert len(shown) == 30 and not shown & consumed


def test_evaluating_a_model_that_saw_the_test_period_is_refused(heavy):
    from vistaste.towers.evaluation import evaluate

    root, _, _ = heavy  # trained with refit="all": it learned from the test period
    with pytest.raises(ValueError, match="would be leaked"):
        evaluate(root / "data", {"shipped": root / "model"}, baselines=False)


def test_served_slate_is_the_ranking_evaluation_measures(heavy):
    """Serving (exported model, ScaNN/exact candidates, trend boost from the exported clicks) and evaluation
    (trained model scores, trend_boost.boosted) rank a user's unseen items identically."""
    from vistaste.data.trends import TrendSetting
    from vistaste.towers import trend_boost
    from vistaste.towers.features import latest_histories, positives
    from vistaste.towers.training import TrainedTwoTower

    root, logs, _ = heavy
    recommender = Recommender(root / "models")
    recommender.trend = TrendSetting(72.0, 0.0, 0.05)
    now = logs["timestamp"].max() + pd.Timedelta(hours=1)
    user = "u007"
    slate = recommender.recommend(user, k=20, method="none", trend_scores=recommender.trend_scores(now=now))

    trained = TrainedTwoTower.load(root / "model")
    table = trained.table
    pos = positives(logs)
    rows = table.rows(pos["item_id"].to_numpy())
    history = latest_histories(pos, rows, np.array([user], dtype=object), trained.config.history_length)
    hidden = np.unique(rows[(pos["user_id"] == user).to_numpy()])
    raw = trained.user_vectors([user], history, [hidden]) @ trained.item_vectors().T  # the ALS term reads all they consumed
    # The clicks the export kept (as far back as the model's own chosen boost remembers), as serving reads them.
    trend = trend_boost.trend_vector(recommender.trend_clicks, now, table, 72.0, 0.0)
    assert np.sort(trend)[-20:].min() > 0  # the boost has something to lift
    ranked = trend_boost.boosted(raw, [hidden], None, trend, 0.05)
    expected = list(table.ids[_top(ranked, 20)])
    assert list(slate.items["item_id"]) == expected
    unboosted = recommender.recommend(user, k=20, method="none", trend_weight=0.0)
    assert list(unboosted.items["item_id"]) != expected  # the boost changed the order, and both paths agree on how


def _top(ranked, k):
    return np.argsort(-ranked[0], kind="stable")[:k]


def test_training_pipeline_and_exported_model_build_the_same_user(heavy):
    """Features through training's tf.data pipeline -> the trained user tower == the exported ``user_embedding``."""
    import tensorflow as tf

    from vistaste.towers.features import PAD, histories_before_each, positives
    from vistaste.towers.training import TrainedTwoTower, _dataset

    root, logs, _ = heavy
    trained = TrainedTwoTower.load(root / "model")
    table = trained.table
    pos = positives(logs).reset_index(drop=True)
    rows = table.rows(pos["item_id"].to_numpy())
    histories = histories_before_each(pos, rows, trained.config.history_length)
    long_enough = np.flatnonzero((histories != PAD).sum(axis=1) >= 3)
    pick = long_enough[np.unique(pos["user_id"].to_numpy()[long_enough], return_index=True)[1]][:8]  # one example per user
    data = _dataset(pos["user_id"].to_numpy()[pick], histories[pick], rows[pick], np.full(len(pick), 0.01), table, len(pick), seed=0)
    batch = next(iter(data))
    from_training = trained.model.user_tower(batch["user"]).numpy()
    order = [list(pos["user_id"].to_numpy()[pick]).index(u.decode()) for u in batch["user"]["user_id"].numpy()]  # the pipeline shuffles

    exported = tf.saved_model.load(str(root / "models" / "1" / "saved_model")).signatures["user_embedding"]
    ids = [[str(table.ids[r]) if r != PAD else "" for r in histories[pick][i]] for i in order]
    from_export = exported(user_id=tf.constant([str(pos["user_id"][pick[i]]) for i in order]),
                           history=tf.constant(ids))["embedding"].numpy()
    # The towers' part (a collaborative term, if training chose one, follows it: tested through the rankings below).
    np.testing.assert_allclose(from_training, from_export[:, :trained.config.output_dim], atol=1e-6)
    assert np.abs(from_training[0] - from_training[1:]).max() > 1e-3  # different histories, different users


def test_http_serves_the_trend_boost_the_model_chose(heavy, tmp_path):
    """With no trend setting given, the service applies the model card's (chosen in training); the slate is
    the Python recommender's for the same boost, and an explicit 0 turns it off."""
    import json
    import shutil

    from vistaste.data.trends import TrendSetting
    from vistaste.serving.service import create_app
    from vistaste.serving.settings import Settings

    root, _, _ = heavy
    models = tmp_path / "models"
    shutil.copytree(root / "models", models)
    card_path = models / "1" / "model_card.json"
    card = json.loads(card_path.read_text())
    card["training"]["history"]["trend"] = TrendSetting(72.0, 0.0, 0.05).to_dict()
    card_path.write_text(json.dumps(card))

    recommender = Recommender(models)
    assert recommender.trend.weight == 0.05
    user = "u007"
    expected = recommender.recommend(user, k=15, method="none")  # the card's boost, trends from the exported clicks
    plain = recommender.recommend(user, k=15, method="none", trend_weight=0.0)
    assert list(expected.items["item_id"]) != list(plain.items["item_id"]) and expected.items["trend"].max() > 0

    def served(**settings):
        app = create_app(Settings(models_dir=models, feedback_db=tmp_path / "fb.sqlite", diversity="none", **settings))
        with TestClient(app) as client:
            return [item["item_id"] for item in client.get(f"/recommendations/{user}", params={"k": 15}).json()["items"]]

    assert served() == list(expected.items["item_id"])
    assert served(trend_weight=0.0) == list(plain.items["item_id"])


BOOST = 0.3  # the trend boost's weight there: enough to move a typical user's top 20


@pytest.mark.parametrize("slots", [0, 4])
def test_saved_model_alone_ranks_as_evaluated(heavy, tmp_path, slots):
    """A consumer of the SavedModel alone (TF Serving, an external evaluator) gets the ranking `evaluate`
    measures: ``recommend_history`` with everything the user consumed, exported with k = the catalog and
    the consumed items then dropped, equals ``trend_boost.boosted`` over the trained model's scores with
    the trends at the log's end; so do ``recommend_unseen`` and ``recommend``, and ``candidates`` is the
    model's order alone. With every place boosted and with a mixed slate (the first ``slots`` boosted), the
    collaborative term in the scores (the ALS factors solved in the graph as in ``user_vectors``)."""
    import json
    import shutil

    import tensorflow as tf

    from vistaste.towers import trend_boost
    from vistaste.towers.features import latest_histories, positives
    from vistaste.towers.training import TrainedTwoTower

    root, logs, _ = heavy
    model_dir = tmp_path / "model"
    shutil.copytree(root / "model", model_dir)
    history_file = model_dir / "history.json"
    history = json.loads(history_file.read_text())
    history["trend"] = {"half_life_hours": 72.0, "tag_share": 0.0, "weight": BOOST, "slots": slots}
    history_file.write_text(json.dumps(history))
    if not (model_dir / "collaborative.npz").exists():  # the ALS term in the scores whether or not training chose it
        from vistaste.towers.collaborative import Collaborative
        from vistaste.towers.slices import positive_rows

        table = TrainedTwoTower.load(model_dir).table
        Collaborative.fit(positive_rows(logs, table), table, gamma=1.0).save(model_dir / "collaborative.npz")
    assert TrainedTwoTower.load(model_dir).collaborative.gamma > 0
    version = export(model_dir, root / "data", tmp_path / "models", k=N_ITEMS)
    signatures = tf.saved_model.load(str(version / "saved_model")).signatures

    trained = TrainedTwoTower.load(model_dir)
    table = trained.table
    pos = positives(logs)
    rows = table.rows(pos["item_id"].to_numpy())
    trend = trend_boost.trend_vector(pos[["item_id", "timestamp"]], pos["timestamp"].max(), table, 72.0, 0.0)
    moved = []
    for user in ("u007", HEAVY):
        mine = pos[pos["user_id"] == user].sort_values("timestamp", kind="stable")
        consumed = set(mine["item_id"])
        stored = latest_histories(pos, rows, np.array([user], dtype=object), trained.config.history_length)
        raw = trained.user_vectors([user], stored, [table.rows(np.array(sorted(consumed)))]) @ trained.item_vectors().T
        ranked = trend_boost.boosted(raw, [table.rows(np.array(sorted(consumed)))], None, trend, BOOST, slots=slots)
        expected = list(table.ids[_top(ranked, N_ITEMS - len(consumed))])
        plain = [i for i in table.ids[np.argsort(-raw[0], kind="stable")] if i not in consumed]
        moved.append(expected[:20] != plain[:20])  # the boost moves the top (the 700-item user's ALS scores may outweigh it)
        if slots:  # after the boosted places, the model's own order
            assert expected[slots:40] == [i for i in plain if i not in expected[:slots]][:40 - slots]

        def ids(out):
            return [b.decode() for b in out["item_ids"].numpy()[0]]

        out = signatures["recommend_history"](user_id=tf.constant([user]), history=tf.constant([list(mine["item_id"])]))
        assert len(ids(out)) == N_ITEMS and [i for i in ids(out) if i not in consumed] == expected
        assert (np.diff(out["scores"].numpy()[0]) <= 1e-6).all()  # scores are the ranking's, in order
        exclude = tf.constant([sorted(consumed)])
        unseen = signatures["recommend_unseen"](user_id=tf.constant([user]), history=tf.constant([list(mine["item_id"])]),
                                                exclude=exclude, k=tf.constant(30))
        assert ids(unseen) == expected[:30]
        assert [i for i in ids(signatures["recommend"](user_id=tf.constant([user]))) if i not in consumed] == expected
        model_only = signatures["candidates"](user_id=tf.constant([user]), history=tf.constant([list(mine["item_id"])]),
                                              exclude=exclude, k=tf.constant(30))
        assert ids(model_only) == plain[:30]
        np.testing.assert_allclose(model_only["relevance"].numpy()[0], np.sort(raw[0][table.rows(np.array(plain[:30]))])[::-1],
                                   atol=1e-5)
    assert any(moved)  # the comparison is not between two identical model orders
