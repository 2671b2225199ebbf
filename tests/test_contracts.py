"""Keras contracts of the towers: get_config -> from_config rebuilds the same layer, and build() from
shapes creates every weight without calling the model on data (the reference: the same tower built by
a call on real inputs, compared weight by weight and output by output with numpy)."""
import json

import numpy as np
import pytest
import tensorflow as tf

from vistaste.towers.item_tower import IdEmbedding, ItemTower, item_input_shapes
from vistaste.towers.model import TwoTowerModel, model_input_shapes
from vistaste.towers.user_tower import AttentionPooling, UserTower, user_input_shapes

VECTOR_DIM, TAG_DIM, HISTORY = 6, 3, 5


def _item_inputs(rng, n=4):
    return {"item_id": tf.constant(["x", "y", "unknown", "x"][:n]), "vector": tf.constant(rng.normal(size=(n, VECTOR_DIM)), tf.float32),
            "tags": tf.constant(rng.random((n, TAG_DIM)), tf.float32)}


def _user_inputs(rng):
    mask = np.array([[True, True, False, False, False], [True] * HISTORY, [False] * HISTORY])  # short, full, empty history
    return {"user_id": tf.constant(["a", "b", "new"]),
            "history": tf.constant(rng.normal(size=(3, HISTORY, VECTOR_DIM)) * mask[..., None], tf.float32),
            "history_tags": tf.constant(rng.random((3, HISTORY, TAG_DIM)) * mask[..., None], tf.float32), "history_mask": tf.constant(mask)}


def _round_trip(layer):
    """from_config of the JSON-serialized config, as a saved model's config file would give it back."""
    return type(layer).from_config(json.loads(json.dumps(layer.get_config())))


def _assert_same_weights_layout(original, rebuilt):
    assert len(rebuilt.weights) == len(original.weights) > 0
    assert [tuple(w.shape) for w in rebuilt.weights] == [tuple(w.shape) for w in original.weights]
    assert [w.trainable for w in rebuilt.weights] == [w.trainable for w in original.weights]


def _item_tower(use_item_id=True, use_tags=True):
    return ItemTower(["x", "y"], output_dim=4, hidden=(8,), use_item_id=use_item_id, id_dim=2, id_dropout=0.2, use_tags=use_tags,
                     name="items")


@pytest.mark.parametrize("use_item_id, use_tags", [(True, True), (False, True), (True, False)])
def test_item_tower_round_trips_and_builds_from_shapes(use_item_id, use_tags):
    rng = np.random.default_rng(0)
    original = _item_tower(use_item_id, use_tags)
    inputs = _item_inputs(rng)
    expected = original(inputs).numpy()  # built by a call: the reference
    rebuilt = _round_trip(original)
    assert rebuilt.get_config() == original.get_config()
    assert not rebuilt.built
    rebuilt.build(item_input_shapes(VECTOR_DIM, TAG_DIM))
    _assert_same_weights_layout(original, rebuilt)
    rebuilt.set_weights(original.get_weights())
    np.testing.assert_array_equal(rebuilt(inputs).numpy(), expected)


def test_item_tower_without_ids_embeds_items_as_unknown_ones():
    """No ``item_id`` (the user tower's history items): exactly the vectors of out-of-vocabulary ids, in training too."""
    rng = np.random.default_rng(0)
    tower = _item_tower()
    inputs = _item_inputs(rng)
    unknown = {**inputs, "item_id": tf.constant(["", "", "unknown", "?"])}
    content = {k: v for k, v in inputs.items() if k != "item_id"}
    for training in (False, True):
        np.testing.assert_array_equal(tower(content, training=training).numpy(), tower(unknown, training=training).numpy())
    assert np.abs(tower(inputs).numpy() - tower(content).numpy()).max() > 1e-3  # known ids do count


@pytest.mark.parametrize("with_item_tower", [True, False])
def test_user_tower_round_trip_keeps_its_item_tower(with_item_tower):
    rng = np.random.default_rng(1)
    item_tower = _item_tower() if with_item_tower else None
    original = UserTower(["a", "b"], output_dim=4, hidden=(8,), history_units=5, use_user_id=True, id_dim=2, item_tower=item_tower)
    inputs = _user_inputs(rng)
    expected = original(inputs).numpy()
    rebuilt = _round_trip(original)
    assert (rebuilt.item_tower is not None) == with_item_tower
    rebuilt.build(user_input_shapes(VECTOR_DIM, TAG_DIM, HISTORY))
    _assert_same_weights_layout(original, rebuilt)
    # The item tower's weights (id embedding, 2 dense layers) and the mix weight are part of the user tower.
    without_item_side = 1 + 2 + 4 + 4  # user id; history projection; attention key, query, recency; MLP
    assert len(rebuilt.weights) == without_item_side + (1 + 4 + 1 if with_item_tower else 0)
    rebuilt.set_weights(original.get_weights())
    np.testing.assert_array_equal(rebuilt(inputs).numpy(), expected)
    assert np.all(np.isfinite(expected))
    np.testing.assert_allclose(np.linalg.norm(expected[:2], axis=1), 1.0, rtol=1e-5)  # (untrained, zero biases: no history, no id -> 0)


def test_two_tower_model_round_trip_shares_one_item_tower():
    rng = np.random.default_rng(2)
    item_tower = _item_tower()
    user_tower = UserTower(["a", "b"], output_dim=4, hidden=(8,), history_units=5, id_dim=2, item_tower=item_tower)
    original = TwoTowerModel(user_tower, item_tower, temperature=0.1, logq_correction=False, remove_accidental_hits=False)
    original.build(model_input_shapes(VECTOR_DIM, TAG_DIM, HISTORY))
    rebuilt = TwoTowerModel.from_config(json.loads(json.dumps(original.get_config())))
    assert (rebuilt.temperature, rebuilt.logq_correction, rebuilt.remove_accidental_hits) == (0.1, False, False)
    assert rebuilt.user_tower.item_tower is rebuilt.item_tower  # shared, not two copies
    rebuilt.build(model_input_shapes(VECTOR_DIM, TAG_DIM, HISTORY))
    _assert_same_weights_layout(original, rebuilt)
    rebuilt.set_weights(original.get_weights())
    user_inputs, item_inputs = _user_inputs(rng), _item_inputs(rng)
    np.testing.assert_array_equal(rebuilt.user_tower(user_inputs).numpy(), original.user_tower(user_inputs).numpy())
    np.testing.assert_array_equal(rebuilt.item_tower(item_inputs).numpy(), original.item_tower(item_inputs).numpy())


def test_weights_saved_from_a_called_model_load_into_a_shape_built_one(tmp_path):
    # Checkpoints written before build() existed (towers built by a call on data) still load.
    rng = np.random.default_rng(3)

    def model():
        item_tower = _item_tower()
        return TwoTowerModel(UserTower(["a", "b"], output_dim=4, hidden=(8,), history_units=5, id_dim=2, item_tower=item_tower), item_tower)

    user_inputs, item_inputs = _user_inputs(rng), _item_inputs(rng)
    called = model()
    users, items = called.user_tower(user_inputs).numpy(), called.item_tower(item_inputs).numpy()
    called.save_weights(str(tmp_path / "weights"))
    built = model()
    built.build(model_input_shapes(VECTOR_DIM, TAG_DIM, HISTORY))
    built.load_weights(str(tmp_path / "weights")).assert_existing_objects_matched()
    np.testing.assert_array_equal(built.user_tower(user_inputs).numpy(), users)
    np.testing.assert_array_equal(built.item_tower(item_inputs).numpy(), items)


def test_small_layers_round_trip_and_check_their_shapes():
    embedding = IdEmbedding(["p", "q"], dim=3, dropout=0.1)
    assert _round_trip(embedding).get_config() == embedding.get_config()
    embedding.build((None,))
    assert [tuple(w.shape) for w in embedding.weights] == [(3, 3)]  # 2 ids + the OOV row
    np.testing.assert_array_equal(embedding(tf.constant(["never seen"])).numpy(), np.zeros((1, 3)))
    pool = _round_trip(AttentionPooling(units=4))
    pool.build((None, HISTORY, 7))
    assert sorted(tuple(w.shape) for w in pool.weights) == sorted([(7, 4), (4,), (4,), (HISTORY,)])
    with pytest.raises(ValueError, match="known sequence length"):
        AttentionPooling(units=4).build((None, None, 7))


def test_user_tower_embeds_each_distinct_history_item_once_with_the_same_result():
    """Item by item (``user_inputs``: training, evaluation and serving) the tower runs its per-item layers once
    per distinct item; the user vectors and the gradients equal those computed slot by slot."""
    import numpy as np
    import tensorflow as tf

    from vistaste.towers.inputs import user_inputs
    from vistaste.towers.item_tower import ItemTower
    from vistaste.towers.user_tower import UserTower

    rng = np.random.default_rng(0)
    vectors, tags = rng.normal(size=(7, 5)).astype(np.float32), (rng.random((7, 3)) < 0.5).astype(np.float32)
    rows = np.array([[-1, 2, 3, 2], [3, 3, 3, 1], [-1, -1, -1, 6], [-1, -1, -1, -1]])  # repeats, a new user, an empty history
    tower = UserTower(["a", "b"], output_dim=8, hidden=(), history_units=6, use_user_id=False,
                      item_tower=ItemTower(["x"], output_dim=8, hidden=(), use_item_id=True))
    features = user_inputs(["a", "b", "c", "d"], rows, vectors, tags)
    assert features["history_items"]["vector"].shape[0] == len(np.unique(rows))  # 2, 3, 1, 6 and PAD
    mask = rows != -1
    slot_by_slot = {"user_id": features["user_id"], "history_mask": tf.constant(mask),
                    "history": tf.constant(vectors[rows] * mask[..., None]), "history_tags": tf.constant(tags[rows] * mask[..., None])}
    for training in (False, True):
        with tf.GradientTape(persistent=True) as tape:
            deduped, plain = tower(features, training=training), tower(slot_by_slot, training=training)
            loss_deduped, loss_plain = tf.reduce_sum(deduped ** 2 * np.arange(8)), tf.reduce_sum(plain ** 2 * np.arange(8))
        np.testing.assert_allclose(deduped.numpy(), plain.numpy(), atol=1e-6)
        for a, b in zip(tape.gradient(loss_deduped, tower.trainable_variables), tape.gradient(loss_plain, tower.trainable_variables)):
            if a is None or b is None:  # the item ids' embedding: history items are embedded without ids
                assert a is None and b is None
                continue
            np.testing.assert_allclose(tf.convert_to_tensor(a).numpy(), tf.convert_to_tensor(b).numpy(), atol=1e-5)



def test_slate_item_scores_without_a_value_are_null_in_json():
    """The recommender marks a score a slate item lacks as NaN; the API model answers null (JSON has no NaN)."""
    from vistaste.serving.schemas import SlateItem

    item = SlateItem(item_id="a", score=float("nan"), relevance=0.5, trend=float("nan"), diversity_gain=None, reason="popular")
    assert json.loads(item.model_dump_json()) == {"item_id": "a", "score": None, "relevance": 0.5, "trend": None,
                                                   "diversity_gain": None, "reason": "popular", "image_path": None, "image_url": None}
