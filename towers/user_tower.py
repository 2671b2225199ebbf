"""User tower: user id + recent clicked images (attention-pooled) + taste leanings -> unit vector.

A brand-new user has no id (OOV -> zero) but a few clicks: the history path alone serves them.
Like the item tower, every layer builds from shapes (:func:`user_input_shapes`) and round-trips
through ``get_config``/``from_config``, the shared item tower included.
"""
from __future__ import annotations

import tensorflow as tf
import tf_keras

from vistaste.towers.item_tower import PACKAGE, IdEmbedding, ItemTower, item_input_shapes, mlp


def user_input_shapes(vector_dim: int, tag_dim: int, history_length: int, batch: int | None = None) -> dict[str, tf.TensorShape]:
    """The shapes :class:`UserTower` is built from: ``user_input_shapes(128, 12, 20)`` -> user_id ``[B]``,
    history ``[B, 20, 128]``, history_tags ``[B, 20, 12]``, history_mask ``[B, 20]``."""
    return {"user_id": tf.TensorShape([batch]), "history": tf.TensorShape([batch, history_length, vector_dim]),
            "history_tags": tf.TensorShape([batch, history_length, tag_dim]), "history_mask": tf.TensorShape([batch, history_length])}


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

    def call(self, values, mask):
        scores = tf.einsum("bnu,u->bn", self.key(values), self.query) + self.recency
        scores = tf.where(mask, scores, tf.fill(tf.shape(scores), -1e9))
        weights = tf.nn.softmax(scores, axis=-1) * tf.cast(mask, values.dtype)
        return tf.einsum("bn,bnd->bd", weights, values)

    def get_config(self):
        return {**super().get_config(), "units": self.units}


@tf_keras.utils.register_keras_serializable(package=PACKAGE)
class UserTower(tf_keras.layers.Layer):
    """Inputs ``{"user_id": [B] str, "history": [B, N, d], "history_tags": [B, N, t], "history_mask": [B, N] bool}``
    -> L2-normalised ``[B, output_dim]``. Taste leanings are the mean tag profile of the history.

    With a shared ``item_tower``, the history's items are also embedded by it (image and tags only, no
    id) and their mean is added to the output: the user starts *in* the item space, next to what they
    clicked, and the MLP learns the correction (who they are, which of their tastes, what is trending).

    Build without data: ``tower.build(user_input_shapes(vector_dim=128, tag_dim=12, history_length=20))``;
    this builds a shared item tower too, if it is not built yet.
    """

    def __init__(self, user_vocabulary: list[str], output_dim: int = 64, hidden: tuple[int, ...] = (256,), history_units: int = 64,
                 use_user_id: bool = True, id_dim: int = 32, id_dropout: float = 0.3, item_tower: ItemTower | None = None, **kwargs):
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
        """``input_shape``: ``{"user_id": [B], "history": [B, N, d], "history_tags": [B, N, t], "history_mask": [B, N]}``."""
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

    def _history_in_item_space(self, inputs, weights, count, training):
        # Only real (unpadded) history slots go through the item tower: most histories are short. With
        # ``history_rows`` (tower inputs from vistaste.towers.inputs carry them), each distinct item goes
        # through it once and is gathered back: a batch's history slots repeat popular items many times.
        shape = tf.shape(inputs["history"])
        slots = tf.where(tf.reshape(inputs["history_mask"], [-1]))
        tag_width = inputs["history_tags"].shape[-1]
        vectors = tf.gather_nd(tf.reshape(inputs["history"], [-1, inputs["history"].shape[-1]]), slots)
        tags = (tf.gather_nd(tf.reshape(inputs["history_tags"], [-1, tag_width]), slots) if tag_width
                else tf.zeros([tf.shape(slots)[0], 0], inputs["history_tags"].dtype))  # a catalog without tags
        if "history_rows" in inputs:
            rows = tf.gather_nd(tf.reshape(tf.cast(inputs["history_rows"], tf.int64), [-1]), slots)
            distinct, position = tf.unique(rows)
            first = tf.math.unsorted_segment_min(tf.range(tf.shape(rows)[0]), position, tf.shape(distinct)[0])
            vectors, tags = tf.gather(vectors, first), tf.gather(tags, first)
        flat = {"vector": vectors, "tags": tags, "item_id": tf.fill([tf.shape(vectors)[0]], "")}  # history items: pixels and tags, no ids
        embedded = self.item_tower(flat, training=training)
        if "history_rows" in inputs:
            embedded = tf.gather(embedded, position)
        embedded = tf.scatter_nd(slots, embedded, [shape[0] * shape[1], self.output_dim])
        items = tf.reshape(embedded, [shape[0], shape[1], self.output_dim])
        return tf.reduce_sum(items * weights, axis=1) / tf.maximum(count, 1.0)

    def call(self, inputs, training=False):
        mask = inputs["history_mask"]
        steps = self.history_projection(inputs["history"])
        pooled = self.pool(steps, mask)
        weights = tf.cast(mask, steps.dtype)[..., None]
        count = tf.reduce_sum(weights, axis=1)
        taste = tf.reduce_sum(inputs["history_tags"] * weights, axis=1) / tf.maximum(count, 1.0)
        history_size = tf.math.log1p(count)
        parts = [pooled, taste, history_size]
        if self.user_id is not None:
            parts.append(self.user_id(inputs["user_id"], training=training))
        out = tf.math.l2_normalize(self.project(tf.concat(parts, axis=-1)), axis=-1)
        if self.item_tower is not None:
            out = out + self.history_mix * self._history_in_item_space(inputs, weights, count, training)
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
