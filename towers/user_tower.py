"""User tower: user id + recent clicked images (attention-pooled) + taste leanings -> unit vector.

A brand-new user has no id (OOV -> zero) but a few clicks: the history path alone serves them.
Like the item tower, every layer builds from shapes (:func:`user_input_shapes`) and round-trips
through ``get_config``/``from_config``, the shared item tower included.
"""
from __future__ import annotations

import tensorflow as tf
import tf_keras

from vistaste.towers.config import TrainConfig  # the constructors' defaults are training's
from vistaste.towers.item_tower import PACKAGE, IdEmbedding, ItemTower, item_input_shapes, mlp


def user_input_shapes(vector_dim: int, tag_dim: int, history_length: int, batch: int | None = None) -> dict[str, tf.TensorShape]:
    """The shapes :class:`UserTower` is built from: ``user_input_shapes(128, 12, 20)`` -> user_id ``[B]``,
    history ``[B, 20, 128]``, history_tags ``[B, 20, 12]``, history_mask ``[B, 20]``."""
    return {"user_id": tf.TensorShape([batch]), "history": tf.TensorShape([batch, history_length, vector_dim]),
            "history_tags": tf.TensorShape([batch, history_length, tag_dim]), "history_mask": tf.TensorShape([batch, history_length])}


def _one_row_per_slot(values):
    """``[B, N, d]`` -> (``[B * N, d]``, index ``[B, N]``): every slot its own row."""
    slots = tf.shape(values)[:2]
    n = slots[0] * slots[1]  # not -1: [B, N, 0] (a catalog without tags) has no inferable flat length
    return tf.reshape(values, [n, values.shape[-1]]), tf.reshape(tf.range(n), slots)


def sum_over_slots(values, index, mask, weights):
    """``sum_n weights[b, n] * values[index[b, n]]`` over the real slots (``mask``) of each row: ``[B, d]``.

    ``values`` ``[U, d]`` holds one row per distinct item; ``index``, ``mask`` and ``weights`` are ``[B, N]``.
    Only real slots are gathered (most histories are much shorter than N), and no ``[B, N, d]`` tensor is made.
    """
    slots = tf.where(mask)
    picked = tf.gather(values, tf.gather_nd(index, slots)) * tf.gather_nd(weights, slots)[:, None]
    return tf.math.unsorted_segment_sum(picked, slots[:, 0], tf.shape(mask, out_type=slots.dtype)[0])


@tf_keras.utils.register_keras_serializable(package=PACKAGE)
class AttentionPooling(tf_keras.layers.Layer):
    """Masked attention over a time-ordered sequence: a learned query scores each (projected) step,
    plus a learned recency bias per position; softmax over valid steps; weighted mean.

    ``[B, N, d]`` values and ``[B, N]`` mask -> ``[B, d]``; an all-masked row gives zeros.
    """

    def __init__(self, units: int, **kwargs):
        if units <= 0:
            raise ValueError(f"units must be positive, got {units}")
        super().__init__(**kwargs)
        self.units = units
        self.key = tf_keras.layers.Dense(units, activation="tanh")
        self.query = None
        self.recency = None

    def build(self, input_shape):
        """``input_shape``: the values' ``[B, N, d]``; N must be known (one recency bias per position)."""
        input_shape = tf.TensorShape(input_shape)
        length = input_shape[1]
        if length is None:
            raise ValueError(f"AttentionPooling needs a known sequence length, got input shape {input_shape}")
        self.key.build(input_shape)
        self.query = self.add_weight(name="query", shape=(self.units,), initializer=tf_keras.initializers.RandomNormal(stddev=0.1))
        self.recency = self.add_weight(name="recency", shape=(length,), initializer="zeros")
        super().build(input_shape)

    def call(self, values, mask, index=None):
        """``values`` ``[B, N, d]``, or with ``index`` ``[B, N]``: the ``[U, d]`` values of U distinct steps
        and, per slot, the row of ``values`` it holds (a step shared by several slots is scored once)."""
        if index is None:
            values, index = _one_row_per_slot(values)
        scores = tf.gather(tf.linalg.matvec(self.key(values), self.query), index) + self.recency
        scores = tf.where(mask, scores, tf.fill(tf.shape(scores), -1e9))
        return sum_over_slots(values, index, mask, tf.nn.softmax(scores, axis=-1))

    def get_config(self):
        return {**super().get_config(), "units": self.units}


@tf_keras.utils.register_keras_serializable(package=PACKAGE)
class UserTower(tf_keras.layers.Layer):
    """Inputs ``{"user_id": [B] str, "history": [B, N, d], "history_tags": [B, N, t], "history_mask": [B, N] bool}``
    -> L2-normalised ``[B, output_dim]``. Taste leanings are the mean tag profile of the history.

    The history may instead come item by item, as :func:`vistaste.towers.inputs.user_inputs` builds it:
    ``"history_items": {"vector": [U, d], "tags": [U, t]}`` for U distinct items and ``"history_index"``
    ``[B, N]``, the item each slot holds. Everything computed per history item (projection, attention key,
    item-tower embedding) then runs once per distinct item and is gathered back to the slots: a training
    batch's 512 x 20 slots hold about a thousand distinct items. Both forms give the same vectors.

    With a shared ``item_tower``, the history's items are also embedded by it (image and tags only, no
    id) and their mean is added to the output: the user starts *in* the item space, next to what they
    clicked, and the MLP learns the correction (who they are, which of their tastes, what is trending).

    Build without data: ``tower.build(user_input_shapes(vector_dim=128, tag_dim=12, history_length=20))``;
    this builds a shared item tower too, if it is not built yet.
    """

    def __init__(self, user_vocabulary: list[str], output_dim: int = TrainConfig.output_dim, hidden: tuple[int, ...] = TrainConfig.hidden,
                 history_units: int = TrainConfig.history_units, use_user_id: bool = TrainConfig.use_user_id,
                 id_dim: int = TrainConfig.id_dim, id_dropout: float = TrainConfig.id_dropout, item_tower: ItemTower | None = None,
                 **kwargs):
        if output_dim <= 0:
            raise ValueError(f"output_dim must be positive, got {output_dim}")
        super().__init__(**kwargs)
        self.user_vocabulary = list(user_vocabulary)
        self.output_dim = output_dim
        self.hidden = tuple(hidden)
        self.history_units = history_units
        self.use_user_id = use_user_id
        self.id_dim = id_dim
        self.id_dropout = id_dropout
        self.user_id = IdEmbedding(self.user_vocabulary, id_dim, id_dropout) if use_user_id else None
        self.history_projection = tf_keras.layers.Dense(history_units, activation="relu")
        self.pool = AttentionPooling(history_units)
        self.project = mlp(self.hidden, output_dim, name="user_mlp")
        self.item_tower = item_tower
        self.history_mix = None

    def build(self, input_shape):
        """``input_shape``: ``{"user_id": [B], "history": [B, N, d], "history_tags": [B, N, t], "history_mask": [B, N]}``
        (see :func:`user_input_shapes`), or the item-by-item form's shapes."""
        if "history_items" in input_shape:
            items = input_shape["history_items"]
            history = tf.TensorShape(input_shape["history_index"]).concatenate(tf.TensorShape(items["vector"])[-1:])
            tag_dim = tf.TensorShape(items["tags"])[-1]
        else:
            history = tf.TensorShape(input_shape["history"])
            tag_dim = tf.TensorShape(input_shape["history_tags"])[-1]
        self.history_projection.build(history)
        self.pool.build(history[:-1].concatenate([self.history_units]))
        width = self.history_units + tag_dim + 1  # pooled history, taste profile, log(1 + history size)
        if self.user_id is not None:
            self.user_id.build(tf.TensorShape(input_shape["user_id"]))
            width += self.id_dim
        self.project.build(tf.TensorShape([history[0], width]))
        if self.item_tower is not None:
            if not self.item_tower.built:
                self.item_tower.build(item_input_shapes(history[-1], tag_dim))
            self.history_mix = self.add_weight(name="history_mix", shape=(), initializer=tf_keras.initializers.Constant(1.0))
        super().build(input_shape)

    def call(self, inputs, training=False):
        mask = inputs["history_mask"]
        if "history_items" in inputs:
            items, index = inputs["history_items"], inputs["history_index"]
        else:
            (vectors, index), (tags, _) = _one_row_per_slot(inputs["history"]), _one_row_per_slot(inputs["history_tags"])
            items = {"vector": vectors, "tags": tags}
        steps = self.history_projection(items["vector"])
        pooled = self.pool(steps, mask, index)
        count = tf.reduce_sum(tf.cast(mask, steps.dtype), axis=1, keepdims=True)
        share = tf.cast(mask, steps.dtype) / tf.maximum(count, 1.0)  # each real slot's share of a history mean
        taste = sum_over_slots(items["tags"], index, mask, share)
        parts = [pooled, taste, tf.math.log1p(count)]  # the last: history size
        if self.user_id is not None:
            parts.append(self.user_id(inputs["user_id"], training=training))
        out = tf.math.l2_normalize(self.project(tf.concat(parts, axis=-1)), axis=-1)
        if self.item_tower is not None:  # history items go through the item tower by image and tags only, no id
            embedded = self.item_tower({"vector": items["vector"], "tags": items["tags"]}, training=training)
            out = out + self.history_mix * sum_over_slots(embedded, index, mask, share)
        return tf.math.l2_normalize(out, axis=-1)

    def get_config(self):
        # The item tower is serialized whole; a model that shares it with its item side re-links the two
        # (TwoTowerModel.from_config), a lone UserTower.from_config gets its own copy.
        item_tower = None if self.item_tower is None else tf_keras.saving.serialize_keras_object(self.item_tower)
        return {**super().get_config(), "user_vocabulary": self.user_vocabulary, "output_dim": self.output_dim, "hidden": self.hidden,
                "history_units": self.history_units, "use_user_id": self.use_user_id, "id_dim": self.id_dim, "id_dropout": self.id_dropout,
                "item_tower": item_tower}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        item_tower = config.pop("item_tower", None)
        if isinstance(item_tower, dict):
            item_tower = tf_keras.saving.deserialize_keras_object(item_tower)
        return cls(item_tower=item_tower, **config)
