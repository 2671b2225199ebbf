import json
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from live_server import Server

from vistaste.serving.export import export, set_current
from vistaste.serving.index import IndexParams, build_index, exact_top_k
from vistaste.serving.recommender import Recommender
from vistaste.serving.settings import Settings
from vistaste.towers.features import PAD
from vistaste.towers.training import TrainConfig, TrainedTwoTower, train


@pytest.fixture(scope="module")
def exported(served_world):
    """The session's exported model (conftest.py: 500 items, 300 users, the world before the behaviours)."""
    return served_world


def test_export_layout_and_model_card(exported):
    root, version_dir = exported
    assert version_dir.name == "1" and (root / "models" / "current").read_text().strip() == "1"
    card = json.loads((version_dir / "model_card.json").read_text())
    assert card["index"]["mode"] == "brute_force" and card["data"]["items"] == 500
    assert card["data"]["backbone"] is None  # the world's own item_vectors.parquet: brought without a manifest
    assert card["packages"]["scann"] == "1.4.2" and card["packages"]["tensorflow-recommenders"] == "0.7.7"


@pytest.mark.e2e
def test_reload_in_a_fresh_process_matches_the_in_memory_model(exported):
    root, version_dir = exported
    trained = TrainedTwoTower.load(root / "model")
    recommender = Recommender(root / "models")
    users = sorted(recommender.known_users)[:5]
    histories = [recommender.stored_history(u) for u in users]
    rows = np.full((len(users), trained.config.history_length), PAD)
    for i, h in enumerate(histories):
        if h:
            rows[i, -len(h):] = trained.table.rows(h)
    logs = pd.read_parquet(root / "world" / "interactions.parquet")
    clicked = logs[logs["event"].isin(["click", "save"])]
    consumed = [trained.table.rows(clicked.loc[clicked["user_id"].astype(str) == u, "item_id"].astype(str).unique()) for u in users]
    # The collaborative term (when training chose one) reads everything each user consumed by export.
    _, expected_rows = exact_top_k(trained.user_vectors(users, rows, consumed), trained.item_vectors(), 50)
    expected = [[str(trained.table.ids[r]) for r in row] for row in expected_rows]
    script = (
        "import json, sys, scann, tensorflow as tf\n"
        f"m = tf.saved_model.load({str(version_dir / 'saved_model')!r})\n"
        f"out = m.signatures['candidates'](user_id=tf.constant({users!r}), history=tf.constant({_padded(histories)!r}),\n"
        f"    exclude=tf.constant([['']] * {len(users)}), k=tf.constant(50))\n"
        "print(json.dumps([[b.decode() for b in row] for row in out['item_ids'].numpy()]))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                            env={"TF_USE_LEGACY_KERAS": "1", "PATH": ""})
    assert json.loads(result.stdout.strip().splitlines()[-1]) == expected
    # The history signature with the same clicks gives the same answer.
    by_history = [recommender.candidates(u, h, n=50)[0].ids.tolist() for u, h in zip(users, histories)]
    assert by_history == expected


def _padded(histories):
    width = max(1, *(len(h) for h in histories))
    return [[""] * (width - len(h)) + list(h) for h in histories]


def test_scann_hashing_recall_against_exact_search():
    # Clustered like real embeddings (isotropic noise is the worst case for any partitioning).
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(200, 32))
    items = (centres[rng.integers(0, 200, 20_000)] + 0.35 * rng.normal(size=(20_000, 32))).astype(np.float32)
    queries = (centres[rng.integers(0, 200, 50)] + 0.35 * rng.normal(size=(50, 32))).astype(np.float32)
    ids = np.array([f"i{j}" for j in range(len(items))])
    params = IndexParams.for_catalog(len(items), 100, mode="tree_ah", num_leaves=140, num_leaves_to_search=30)
    index = build_index(ids, items, k=100, params=params)
    _, found = index(queries)
    _, exact_rows = exact_top_k(queries, items, 100)
    found = [[b.decode() for b in row] for row in found.numpy()]
    recall = np.mean([len(set(f) & set(ids[e])) / 100 for f, e in zip(found, exact_rows)])
    assert recall >= 0.9, recall


def test_index_params_follow_catalog_size():
    assert IndexParams.for_catalog(5_000).mode == "brute_force"
    assert IndexParams.for_catalog(50_000).mode == "ah"
    large = IndexParams.for_catalog(1_000_000, k=100)
    assert large.mode == "tree_ah" and large.num_leaves == 1000 and large.num_leaves_to_search == 120 and large.reorder == 1500
    with pytest.raises(ValueError, match="num_leaves_to_search"):
        IndexParams("tree_ah", num_leaves=10, num_leaves_to_search=20)


def test_recommender_excludes_history_and_falls_back_for_unknown_users(exported):
    root, _ = exported
    recommender = Recommender(root / "models")
    user = sorted(recommender.known_users)[0]
    slate = recommender.recommend(user, k=10)
    assert slate.fallback is None and len(slate.items) == 10
    assert not set(slate.items["item_id"]) & set(recommender.stored_history(user))
    anonymous = recommender.recommend("someone-new", k=5)
    assert anonymous.fallback == "popular" and len(anonymous.items) == 5


@pytest.mark.parametrize("params", [None, IndexParams("ah", reorder=300), IndexParams("tree_ah", num_leaves=10, num_leaves_to_search=6,
                                                                                      reorder=300)], ids=["brute_force", "ah", "tree_ah"])
def test_the_index_searched_directly_gives_the_candidates_signatures_answer(exported, tmp_path, params):
    """Recommender's default path (user_embedding, then the SavedModel's own ScaNN index through scann's pybind
    searcher) returns exactly what the ``candidates`` signature returns: ids, scores, vectors, history length, for
    stored and explicit histories and seen sets that leave the index enough unseen items or not (then the signature
    answers, as it does where a sparse tree search comes back short)."""
    root, _ = exported
    models = root / "models" if params is None else export(root / "model", root / "world", tmp_path / "models", k=50, params=params).parent
    direct, signature = Recommender(models), Recommender(models, direct_index=False)
    assert direct.direct_index is not None and signature.direct_index is None
    index_k = direct.card["index"]["index_k"]
    answered = []
    for user in sorted(direct.known_users)[:25]:
        top = signature.candidates(user, n=index_k)[0].ids
        history = direct.stored_history(user)
        for given, seen in ((None, set()), (None, direct.seen(user)), (history[:3] + ["unknown-item"], set(top[:20])), (None, set(top))):
            query = direct._embed(user_id=tf.constant([user]), history=tf.constant([(history if given is None else given) or [""]]))
            answered.append(direct.index_candidates(query["embedding"].numpy()[0], seen, 50) is not None)
            (a, a_length), (b, b_length) = direct.candidates(user, given, seen, 50), signature.candidates(user, given, seen, 50)
            assert a.ids.tolist() == b.ids.tolist() and a_length == b_length
            np.testing.assert_array_equal(a.relevance, b.relevance)
            np.testing.assert_array_equal(a.vectors, b.vectors)
    assert any(answered) and not all(answered)  # both paths taken

# ------------------------------------------------------------------------------------------- HTTP
def _settings(root, **kw):
    kw.setdefault("switch_delay_s", 0.0)
    return Settings(models_dir=root / "models", feedback_db=root / "feedback.sqlite", api_key="test-key", reload_interval_s=0.2, **kw)


def test_http_recommendations_limits_and_fallback(exported):
    root, _ = exported
    user = sorted(np.load(root / "models" / "1" / "users.npz")["ids"].astype(str))[0]  # a known user: the export's first
    with Server(_settings(root)) as running, running.client() as client:
        assert client.get("/healthz").json()["status"] == "ok"
        body = client.get(f"/recommendations/{user}", params={"k": 12}).json()
        assert body["fallback"] is None and len(body["items"]) == 12 and body["version"] == "1"
        assert len({i["item_id"] for i in body["items"]}) == 12
        unknown = client.get("/recommendations/nobody-knows-me", params={"k": 5}).json()
        assert unknown["fallback"] == "popular" and len(unknown["items"]) == 5
        too_many = client.get(f"/recommendations/{user}", params={"k": 900})
        assert too_many.status_code == 422 and "query.k: Input should be less than or equal to 500" in too_many.json()["detail"]
        beyond_index = client.get(f"/recommendations/{user}", params={"k": 60})  # exported with k=50 candidates
        assert beyond_index.status_code == 422 and "k must be <= 50 (candidates per query" in beyond_index.json()["detail"]
        anonymous = client.post("/recommendations", json={"history": ["i0000001", "i0000002"], "k": 7}).json()
        assert anonymous["fallback"] is None and len(anonymous["items"]) == 7
        assert not {"i0000001", "i0000002"} & {i["item_id"] for i in anonymous["items"]}
        bad_item = client.post("/recommendations", json={"history": ["no-such-item"], "k": 3})
        assert bad_item.status_code == 422 and bad_item.json()["unknown_items"] == ["no-such-item"]
        long_history = client.post("/recommendations", json={"history": ["i0000001"] * 501, "k": 3})
        assert long_history.status_code == 422 and "history must have <= 500 items, got 501" in long_history.json()["detail"]
        huge = client.post("/recommendations", content=b"{" + b" " * 1_100_000 + b"}", headers={"content-type": "application/json"})
        assert huge.status_code == 413


def test_http_events_need_a_key_persist_across_restarts_and_feed_metrics(exported, tmp_path):
    root, _ = exported
    settings = Settings(models_dir=root / "models", feedback_db=tmp_path / "fb.sqlite", api_key="test-key")
    events = {"events": [{"user_id": "u000001", "item_id": "i0000003", "event": "impression", "position": 0},
                         {"user_id": "u000001", "item_id": "i0000003", "event": "click", "position": 0},
                         {"user_id": "u000001", "item_id": "i0000004", "event": "impression", "position": 1}]}
    with Server(settings) as running, running.client() as client:
        assert client.post("/events", json=events).status_code == 401
        assert client.post("/events", json=events, headers={"X-API-Key": "wrong"}).status_code == 401
        bad = client.post("/events", json={"events": [{"user_id": "u", "item_id": "i0000003", "event": "like"}]},
                          headers={"X-API-Key": "test-key"})
        assert bad.status_code == 422 and "event" in bad.text
        unknown = client.post("/events", json={"events": [{"user_id": "u", "item_id": "ghost", "event": "click"}]},
                              headers={"X-API-Key": "test-key"})
        assert unknown.status_code == 422 and unknown.json()["unknown_items"] == ["ghost"]
        assert client.post("/events", json=events, headers={"X-API-Key": "test-key"}).json() == {"stored": 3}
        # A clicked item is not recommended again to that user.
        slate = client.get("/recommendations/u000001", params={"k": 50}).json()
        assert "i0000003" not in {i["item_id"] for i in slate["items"]}
    with Server(settings) as running, running.client() as client:  # a new process-equivalent: fresh app on the same store
        client.get("/healthz")
        metrics = client.get("/metrics").text
        assert "vistaste_ctr 0.5" in metrics  # 1 click / 2 impressions, read back from the store
        assert 'vistaste_requests_total{endpoint="/healthz",status="200"} 1.0' in metrics
        assert 'vistaste_request_latency_seconds_bucket{endpoint="/healthz",le="0.5"} 1.0' in metrics
    from vistaste.serving.feedback import read_feedback_logs

    logs = read_feedback_logs(tmp_path / "fb.sqlite")
    assert logs["event"].tolist() == ["impression", "click", "impression"] and logs["timestamp"].dt.tz is not None


def test_writes_are_refused_without_a_configured_key(exported, tmp_path):
    root, _ = exported
    with Server(Settings(models_dir=root / "models", feedback_db=tmp_path / "fb.sqlite")) as running, running.client() as client:
        response = client.post("/events", json={"events": [{"user_id": "u", "item_id": "i0000001", "event": "click"}]},
                               headers={"X-API-Key": "x"})
        assert response.status_code == 503 and "VISTASTE_API_KEY" in response.json()["detail"]


def test_hot_reload_swaps_versions_without_failed_requests(exported):
    root, version_dir = exported
    with Server(_settings(root)) as running, running.client() as client:
        assert client.get("/healthz").json()["version"] == "1"
        failures, versions = [], set()
        second = export(root / "model", root / "world", root / "models", k=50)  # writes version 2 and moves current
        deadline = time.time() + 30
        while time.time() < deadline:
            response = client.get("/recommendations/u000000", params={"k": 5})
            if response.status_code != 200:
                failures.append(response.status_code)
            versions.add(response.json().get("version"))
            if "2" in versions:
                break
        assert failures == [] and "2" in versions
        set_current(root / "models", "1")  # roll back for the other tests
        deadline = time.time() + 30
        while client.get("/healthz").json()["version"] != "1" and time.time() < deadline:
            time.sleep(0.1)
        assert second.name == "2"


def test_feedback_store_closes_the_loop_into_training(exported, tmp_path):
    from vistaste.serving.feedback import FeedbackStore, read_feedback_logs

    root, _ = exported
    store = FeedbackStore(tmp_path / "fb.sqlite")
    when = "2026-01-05T12:00:00Z"  # inside the training period of the 14-day world
    store.record([{"user_id": "web-user", "item_id": f"i{n:07d}", "event": event, "timestamp": when, "position": n}
                  for n in range(5) for event in ("impression", "click")])
    store.export_parquet(tmp_path / "fb.parquet")
    store.close()
    for source in (tmp_path / "fb.sqlite", tmp_path / "fb.parquet"):
        logs = read_feedback_logs(source)
        assert list(logs.columns) == ["user_id", "item_id", "timestamp", "event", "position"] and len(logs) == 10
    trained = train(root / "world", tmp_path / "model", TrainConfig(epochs=1, test_days=3, min_val_users=5),
                    extra_logs=[read_feedback_logs(tmp_path / "fb.sqlite")], verbose=False)
    assert "web-user" in trained.model.user_tower.user_vocabulary  # its clicks were training examples


def test_rerank_tradeoff_scores_test_or_validation_days(exported):
    from vistaste.bench.tradeoff import rerank_tradeoff

    root, _ = exported
    test = rerank_tradeoff(root / "model", root / "world", trade_offs=(1.0, 0.5), k=20, n_candidates=60, diversity_k=5)
    validation = rerank_tradeoff(root / "model", root / "world", trade_offs=(1.0, 0.5), k=20, n_candidates=60, diversity_k=5,
                                 period="validation")
    for frame in (test, validation):
        assert set(frame["method"]) == {"mmr", "dpp", "dpp-window10", "dpp-window10-rbf0.5", "dpp-window10-reorder-top-k"}
        reorder = frame[frame["method"] == "dpp-window10-reorder-top-k"]
        # The same 20 items in another order: recall identical, diversity equal up to float32 summation order.
        assert (reorder["slate_recall_change"] == 0).all() and (reorder["slate_diversity_change"].abs() < 1e-6).all()
        plain = frame[frame["trade_off"] == 1.0]
        for name, depth in (("screen", 5), ("slate", 20)):
            assert (plain[f"{name}_recall_change"] == 0).all() and plain[f"recall@{depth}"].nunique() == 1  # λ=θ=1 is the relevance order
            low, change, high = (frame[f"{name}_recall_change{end}"] for end in ("_low", "", "_high"))
            assert ((low <= change + 1e-12) & (change <= high + 1e-12)).all()
        assert (frame[frame["trade_off"] == 0.5]["screen_diversity_change"] > 0).all()  # diversifying raises diversity
        assert (frame["recall@5"] <= frame["recall@20"]).all()  # the first screen is part of the slate
    assert not np.isclose(test["recall@20"].iloc[0], validation["recall@20"].iloc[0])  # different clicks scored
    from vistaste.towers.slices import build_slices
    from vistaste.towers.training import TrainedTwoTower, prepare

    trained = TrainedTwoTower.load(root / "model")
    split, table, _, _ = prepare(root / "world", trained.config)
    assert test["users"].iloc[0] == len(build_slices(split, table, trained.config.history_length)[0]) > 50  # every evaluable user
    with pytest.raises(ValueError, match="period"):
        rerank_tradeoff(root / "model", root / "world", period="tomorrow")


def test_every_rerank_method_is_accepted_over_http_and_gives_the_recommenders_slate(exported, tmp_path):
    from vistaste.serving.adaptive import AdaptiveDPP
    from vistaste.serving.rerank import DEFAULT_METHOD, METHODS

    root, _ = exported
    settings = Settings(models_dir=root / "models", feedback_db=tmp_path / "fb.sqlite", api_key="test-key", switch_delay_s=0.0)
    with Server(settings) as running, running.client() as client:
        recommender = running.state.recommender
        user = sorted(recommender.known_users)[1]
        # Three one-impression sessions of a 10-item slate: a user who leaves early, so adaptive lowers their θ.
        now = pd.Timestamp.now(tz="UTC").floor("s")
        shown = [{"user_id": user, "item_id": f"i{n:07d}", "event": "impression", "position": 0,
                  "timestamp": (now - pd.Timedelta(hours=3 - n)).isoformat()} for n in range(3)]
        assert client.post("/events", json={"events": shown}, headers={"X-API-Key": "test-key"}).json() == {"stored": 3}
        live = running.state.store.user_events(user)
        behaviour = recommender.behaviour(user, 10, None, live)
        assert AdaptiveDPP(10, behaviour).trade_off() < AdaptiveDPP.engaged  # the adaptive path is really exercised
        history = recommender.stored_history(user)[-5:]
        for method in METHODS:
            expected = recommender.recommend(user, 10, live_events=live, method=method)
            by_user = client.get(f"/recommendations/{user}", params={"k": 10, "method": method})
            assert by_user.status_code == 200, by_user.text
            assert [i["item_id"] for i in by_user.json()["items"]] == expected.items["item_id"].tolist(), method
            given = recommender.recommend(user, 10, history=history, live_events=live, method=method)
            by_history = client.post("/recommendations", json={"user_id": user, "history": history, "k": 10, "method": method})
            assert by_history.status_code == 200, by_history.text
            assert [i["item_id"] for i in by_history.json()["items"]] == given.items["item_id"].tolist(), method
        # Without a method the server's default (VISTASTE_DIVERSITY, adaptive) is used.
        default = client.get(f"/recommendations/{user}", params={"k": 10}).json()
        assert settings.diversity == DEFAULT_METHOD
        assert [i["item_id"] for i in default["items"]] == recommender.recommend(user, 10, live_events=live).items["item_id"].tolist()
        for bad in (client.get(f"/recommendations/{user}", params={"method": "fancy"}),
                    client.post("/recommendations", json={"history": history, "method": "fancy"})):
            assert bad.status_code == 422 and bad.headers["content-type"] == "application/json"
            body = bad.json()
            assert body["type"] == "validation"
            assert all(f"'{method}'" in body["detail"] for method in METHODS), body["detail"]
        schema = client.get("/openapi.json").json()
        parameter = next(p for p in schema["paths"]["/recommendations/{user_id}"]["get"]["parameters"] if p["name"] == "method")
        listed = [option.get("enum") for option in parameter["schema"]["anyOf"] if "enum" in option]
        assert listed == [list(METHODS)]
        body_schema = schema["components"]["schemas"]["RecommendRequest"]["properties"]["method"]
        assert [option.get("enum") for option in body_schema["anyOf"] if "enum" in option] == [list(METHODS)]
    with pytest.raises(ValueError, match="method must be one of adaptive, dpp, mmr, none, got 'fancy'"):
        recommender.recommend("nobody-knows-me", 5, method="fancy")  # checked before the popular fallback too
    assert [Settings(diversity=method).diversity for method in METHODS] == list(METHODS)  # the server's default: the same list
    with pytest.raises(ValueError, match="diversity"):
        Settings(diversity="fancy")
