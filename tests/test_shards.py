"""The sharded index: stable assignment, exact shards give exactly one exact index's top-k (numpy brute
force as the reference), only changed shards are rebuilt, and a sharded export ranks like exact search."""
import hashlib

import numpy as np
import pytest

from vistaste.serving.index import IndexParams, build_index, exact_top_k
from vistaste.serving.shards import build_sharded_index, shard_of


def test_shard_assignment_is_a_stable_hash_of_the_id():
    ids = [f"item-{n}" for n in range(2000)]
    shards = shard_of(ids, 4)
    by_hand = [int(hashlib.sha256(b"item-7").hexdigest()[:16], 16) % 4, int(hashlib.sha256(b"item-1999").hexdigest()[:16], 16) % 4]
    assert [shards[7], shards[1999]] == by_hand
    assert np.bincount(shards, minlength=4).min() > 400  # roughly balanced
    assert (shard_of(ids, 4) == shards).all() and (shard_of(ids, 1) == 0).all()
    with pytest.raises(ValueError, match="n_shards"):
        shard_of(ids, 0)


def _catalog(n=3000, d=16, seed=0):
    rng = np.random.default_rng(seed)
    return np.array([f"i{j}" for j in range(n)]), rng.normal(size=(n, d)).astype(np.float32), rng.normal(size=(25, d)).astype(np.float32)


def test_four_exact_shards_return_exactly_the_global_top_k():
    ids, vectors, queries = _catalog()
    sharded, built = build_sharded_index(ids, vectors, 100, 4, IndexParams("brute_force"))
    assert built == [0, 1, 2, 3]
    scores, found = sharded(queries)
    _, exact_rows = exact_top_k(queries, vectors, 100)
    assert [[b.decode() for b in row] for row in found.numpy()] == [list(ids[r]) for r in exact_rows]
    np.testing.assert_allclose(scores.numpy(), np.sort(queries @ vectors.T, axis=1)[:, ::-1][:, :100], rtol=1e-5, atol=1e-5)
    one = build_index(ids, vectors, 100, IndexParams("brute_force"))
    assert (one(queries)[1].numpy() == found.numpy()).all()


def test_only_the_shards_with_new_items_are_rebuilt():
    ids, vectors, _ = _catalog()
    first, _ = build_sharded_index(ids, vectors, 50, 8, IndexParams("brute_force"))
    rng = np.random.default_rng(1)
    new_ids = np.array(["new-a", "new-b"])
    grown_ids, grown_vectors = np.concatenate([ids, new_ids]), np.concatenate([vectors, rng.normal(size=(2, 16)).astype(np.float32)])
    second, built = build_sharded_index(grown_ids, grown_vectors, 50, 8, IndexParams("brute_force"), previous=first)
    assert built == sorted(set(shard_of(new_ids, 8).tolist()))
    assert all(second.shards[s] is first.shards[s] for s in range(8) if s not in built)
    with pytest.raises(ValueError, match="shards"):
        build_sharded_index(grown_ids, grown_vectors, 50, 4, previous=first)


def test_a_sharded_export_ranks_like_exact_search(tmp_path):
    """Exact shards inside the SavedModel: the same candidates and scores as exact search (numpy) over the
    trained towers' user and item vectors."""
    import json

    import pandas as pd
    import tensorflow as tf

    from vistaste.serving.export import export
    from vistaste.towers.features import PAD
    from vistaste.towers.training import TrainConfig, train

    rng = np.random.default_rng(0)
    items = [f"i{n:03d}" for n in range(300)]
    start = pd.Timestamp("2026-01-01", tz="UTC")
    rows = [(f"u{u}", items[i], start + pd.Timedelta(hours=float(rng.uniform(0, 240))), "click")
            for u in range(40) for i in rng.choice(300, 8, replace=False)]
    data = tmp_path / "data"
    data.mkdir()
    pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "event"]).sort_values("timestamp").to_parquet(
        data / "interactions.parquet", index=False)
    pd.DataFrame({"item_id": items}).to_parquet(data / "catalog.parquet", index=False)
    pd.DataFrame({"item_id": items, "vector": list(rng.normal(size=(300, 8)).astype(np.float32))}).to_parquet(
        data / "item_vectors.parquet", index=False)
    # The towers alone rank (no trend boost, no collaborative term), so exact search is the whole reference.
    config = TrainConfig(epochs=1, batch_size=64, min_val_users=1, trend_boost=False, collaborative=False)
    trained = train(data, tmp_path / "model", config, verbose=False)
    four = export(tmp_path / "model", data, tmp_path / "four", k=40, shards=4)
    assert json.loads((four / "model_card.json").read_text())["index"]["shards"] == 4
    users, history = ["u1", "u2", "nobody"], [[items[0], items[5]], [items[9], ""], ["", ""]]
    got = tf.saved_model.load(str(four / "saved_model")).signatures["recommend_history"](user_id=tf.constant(users),
                                                                                       history=tf.constant(history))
    history_rows = np.full((3, trained.config.history_length), PAD)
    history_rows[0, -2:], history_rows[1, -1:] = trained.table.rows([items[0], items[5]]), trained.table.rows([items[9]])
    scores, top = exact_top_k(trained.user_vectors(users, history_rows), trained.item_vectors(), 40)
    assert [[i.decode() for i in row] for row in got["item_ids"].numpy()] == trained.table.ids[top].astype(str).tolist()
    np.testing.assert_allclose(got["scores"].numpy(), scores, atol=1e-5)
