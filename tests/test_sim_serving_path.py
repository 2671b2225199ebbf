"""The online simulator serves through the serving path: for the same model, log and time, an arm's slate
(:class:`~vistaste.bench.simulate.ArmServer`) is the exported model's (:class:`~vistaste.serving.recommender.Recommender`,
what `vistaste serve` answers with), for every re-ranking method, the popular fallback and the trend boost."""
import numpy as np
import pandas as pd
import pytest

from vistaste.bench.arm_server import LIVE_EVENTS, ArmServer
from vistaste.bench.world import WorldConfig, generate_world
from vistaste.data.embedding import load_vectors
from vistaste.data.io import read_table
from vistaste.data.seen import SeenPolicy
from vistaste.data.trends import catalog_tags
from vistaste.serving.export import export
from vistaste.serving.recommender import Recommender
from vistaste.serving.rerank import METHODS
from vistaste.towers.choosing import collaborative_at
from vistaste.towers.features import PAD, ItemTable
from vistaste.towers.training import TrainConfig, TrainedTwoTower, build_model, compile_model, find_vectors, fit_on_logs

K, N_CANDIDATES = 12, 60
CARD_TREND = {"half_life_hours": 48.0, "tag_share": 0.5, "weight": 0.3}  # a boost "chosen in training", shipped in the card


@pytest.fixture(scope="module")
def both(tmp_path_factory):
    """One model, exported (Recommender) and in memory (ArmServer), over the same world log."""
    root = tmp_path_factory.mktemp("sim_path")
    world = root / "world"
    generate_world(world, WorldConfig.with_behaviours(items=300, users=150, days=8, seed=5, images=False), progress=False)
    catalog = read_table(world / "catalog.parquet")
    ids, vectors = load_vectors(find_vectors(world))
    table = ItemTable.build(ids, vectors, catalog)
    logs = read_table(world / "interactions.parquet")
    logs["timestamp"] = pd.to_datetime(logs["timestamp"], utc=True)
    trained = fit_on_logs(logs, table, TrainConfig(seed=0, batch_size=256), epochs=1, seed=0)
    trained.collaborative = collaborative_at(trained, logs, beta=0.5)  # as the simulator adds it: both paths score with it
    trained.history["trend"] = CARD_TREND
    trained.save(root / "model")
    export(root / "model", world, root / "models", k=N_CANDIDATES)
    recommender = Recommender(root / "models")
    now = logs["timestamp"].max() + pd.Timedelta(hours=1)
    server = ArmServer(trained, table, np.arange(len(table)), logs, now, SeenPolicy(), catalog_tags(catalog), "sim", N_CANDIDATES,
                       trend=trained.trend)
    return recommender, server, logs, now, trained, table


def _live(logs, user):
    """What the service reads from its feedback store for a request: the user's latest events (the export
    stores their clicks only; the seen-item policy hides the last day's impressions, the adaptive re-ranker
    reads how far down the slates they looked)."""
    mine = logs[logs["user_id"] == user].sort_values("timestamp", kind="stable").tail(LIVE_EVENTS)
    return list(zip(mine["item_id"], mine["event"], mine["timestamp"]))


def _users(recommender, n=8):
    known = sorted(recommender.known_users, key=lambda u: (-len(recommender.stored_history(u)), u))
    return known[:n // 2] + known[-(n // 2):]  # long and short histories


@pytest.mark.parametrize("method", METHODS)
def test_an_arms_slate_is_the_exported_models_slate(both, method):
    recommender, server, logs, now, *_ = both
    users = _users(recommender)
    batch = server.slates(users, K, method=method, n_candidates=N_CANDIDATES)  # what run_seed calls: all users at once
    for user, row in zip(users, batch):
        served = recommender.recommend(user, K, method=method, n_candidates=N_CANDIDATES, live_events=_live(logs, user), now=now)
        simulated = server.recommend(user, K, method=method, n_candidates=N_CANDIDATES, live_events=_live(logs, user), now=now)
        assert simulated.items["item_id"].tolist() == served.items["item_id"].tolist(), (method, user)
        np.testing.assert_allclose(simulated.items["score"], served.items["score"], rtol=1e-5, atol=1e-6)
        assert (simulated.items["reason"] == served.items["reason"]).all()
        assert simulated.history_length == served.history_length and simulated.fallback is None
        # Every item is available here, so the server's rows are the table's.
        assert [server.item_ids[r] for r in row if r != PAD] == served.items["item_id"].tolist()


def test_the_same_rules_hide_items_and_boost_trends(both):
    recommender, server, logs, now, *_ = both
    assert server.known_users == recommender.known_users
    recent = logs[(logs["event"] == "impression") & (logs["timestamp"] >= now - pd.Timedelta(hours=24))]
    user = sorted(set(recent["user_id"]) & recommender.known_users)[0]  # shown items in the last day, and clicks before
    live = _live(logs, user)
    assert server.stored_history(user) == recommender.stored_history(user)
    assert server.seen(user) == server.seen(user, live) == recommender.seen(user, live, now)
    shown_today = {item for item, event, t in live if event == "impression" and t >= now - pd.Timedelta(hours=24)}
    assert shown_today and shown_today <= server.seen(user)  # the last day's impressions are hidden, as the service hides them
    assert server.trend_scores(now) == pytest.approx(recommender.trend_scores(now))
    assert server.behaviour(user, K, live_events=live, now=now) == recommender.behaviour(user, K, live_events=live, now=now)
    # The card's boost moved this slate (so the comparison above covered it).
    boosted = server.recommend(user, K, method="none", n_candidates=N_CANDIDATES, now=now).items["item_id"].tolist()
    plain = server.recommend(user, K, method="none", n_candidates=N_CANDIDATES, trend_weight=0.0, now=now).items["item_id"].tolist()
    assert boosted != plain


def test_a_user_without_history_gets_the_same_popular_slate(both):
    recommender, server, _, now, *_ = both
    served = recommender.recommend("someone-new", K, n_candidates=N_CANDIDATES, now=now)
    simulated = server.recommend("someone-new", K, n_candidates=N_CANDIDATES, now=now)
    assert served.fallback == simulated.fallback == "popular"
    assert simulated.items["item_id"].tolist() == served.items["item_id"].tolist()
    assert server.slates(["someone-new"], K, n_candidates=N_CANDIDATES)[0].tolist() == [
        server.row[i] for i in served.items["item_id"]]


def test_the_simulators_collaborative_term_scales_with_beta_and_follows_each_retrain(both):
    """`collaborative_at`: gamma is beta times the spread ratio of the two scores (so linear in beta; 0 is no
    term); the daily retrain (`fit_on_logs` from the arm's model) keeps that weight and refits the factors on the
    log it is given; a given weight of 0 drops the term."""
    *_, logs, _, trained, table = both
    half = collaborative_at(trained, logs, beta=0.5)
    assert half.gamma > 0 and collaborative_at(trained, logs, beta=0.25).gamma == pytest.approx(half.gamma / 2)
    assert collaborative_at(trained, logs, beta=0.0) is None
    earlier = logs[logs["timestamp"] < logs["timestamp"].quantile(0.5)]
    # A copy to warm-start from (a retrain trains its initial model in place, as each arm's daily one does).
    model = build_model(trained.config, trained.model.user_tower.user_vocabulary, trained.model.item_tower.item_vocabulary)
    copy = TrainedTwoTower(trained.config, model, table, trained.pca, {}).build()
    model.set_weights(trained.model.get_weights())
    compile_model(model, trained.config)
    copy.collaborative = trained.collaborative
    retrained = fit_on_logs(earlier, table, trained.config, epochs=1, initial=copy, seed=1)
    assert retrained.collaborative.gamma == trained.collaborative.gamma
    assert not np.allclose(retrained.collaborative.item_factors, trained.collaborative.item_factors)  # fitted on the other log
    assert retrained.dim == trained.dim == trained.config.output_dim + retrained.collaborative.factors
    assert fit_on_logs(earlier, table, trained.config, epochs=1, initial=copy, seed=1, collaborative_gamma=0.0).collaborative is None
