"""Item tower: pretrained image vector (+ tags, + optional item-id embedding) -> unit vector.

An item never seen in training is out of the id vocabulary: its id embedding is exactly zero, so its
vector comes from its image (and tags) alone: cold start needs no retraining.

Every layer here follows the Keras contract: ``get_config`` returns every constructor argument (so
``from_config`` rebuilds the same layer) and ``build`` sizes all weights from the input shapes, so a
model can be built with ``layer.build(shapes)`` before loading weights, without a call on dummy data.
"""
from __future__ import annotations

import tensorflow as tf
import tf_keras

from vistaste.towers.config import TrainConfig  # the constructors' defaults are training's

PACKAGE = "vistaste"  # Keras registration namespace: serialized configs name classes "vistaste>ItemTower"


@tf_keras.utils.register_keras_serializable(package=PACKAGE)
class IdEmbedding(tf_keras.layers.Layer):
    """String id -> embedding; out-of-vocabulary ids map to a zero vector.

    In training, ``dropout`` replaces a share of ids by the OOV bucket so the rest of the tower learns
    to work without them (new users and items look exactly like that at serving time).
    """

    def __init__(self, vocabulary: list[str], dim: int, dropout: float = 0.0, **kwargs):
        if dim <= 0:
            raise ValueError(f"dim must be positive, got {dim}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        super().__init__(**kwargs)
        self.vocabulary = list(vocabulary)
        self.dim = dim
        self.dropout = dropout
        self.lookup = tf_keras.layers.StringLookup(vocabulary=self.vocabulary, num_oov_indices=1, mask_token=None)
        self.embedding = tf_keras.layers.Embedding(len(self.vocabulary) + 1, dim,
                                                   embeddings_initializer=tf_keras.initializers.RandomNormal(stddev=0.05))

    def build(self, input_shape):
        """``input_shape``: the ids' shape, e.g. ``(None,)``."""
        self.embedding.build(tf.TensorShape(input_shape))
        super().build(input_shape)

    def call(self, ids, training=False):
        index = self.lookup(ids)
        if training and self.dropout > 0:
            keep = tf.random.uniform(tf.shape(index)) >= self.dropout
            index = tf.where(keep, index, tf.zeros_like(index))
        known = tf.cast(index > 0, self.compute_dtype)[..., None]
        return self.embedding(index) * known

    def get_config(self):
        return {**super().get_config(), "vocabulary": self.vocabulary, "dim": self.dim, "dropout": self.dropout}


def mlp(hidden: tuple[int, ...], output_dim: int, name: str) -> tf_keras.Sequential:
    layers = [tf_keras.layers.Dense(units, activation="relu") for units in hidden]
    return tf_keras.Sequential(layers + [tf_keras.layers.Dense(output_dim)], name=name)


def item_input_shapes(vector_dim: int, tag_dim: int, batch: int | None = None) -> dict[str, tf.TensorShape]:
    """The shapes :class:`ItemTower` is built from: ``item_input_shapes(128, 12)`` -> item_id ``[B]``,
    vector ``[B, 128]``, tags ``[B, 12]``."""
    return {"item_id": tf.TensorShape([batch]), "vector": tf.TensorShape([batch, vector_dim]), "tags": tf.TensorShape([batch, tag_dim])}


@tf_keras.utils.register_keras_serializable(package=PACKAGE)
class ItemTower(tf_keras.layers.Layer):
    """Inputs ``{"item_id": [B] str, "vector": [B, d], "tags": [B, t]}`` -> L2-normalised ``[B, output_dim]``.

    Without ``"item_id"`` the items are embedded as unknown ones, by image and tags alone (the user tower's
    history items): the same vectors as with out-of-vocabulary ids, without looking any id up.

    Build without data: ``tower.build(item_input_shapes(vector_dim=128, tag_dim=12))``.
    """

    def __init__(self, item_vocabulary: list[str], output_dim: int = TrainConfig.output_dim, hidden: tuple[int, ...] = TrainConfig.hidden,
                 use_item_id: bool = TrainConfig.use_item_id, id_dim: int = TrainConfig.id_dim, id_dropout: float = TrainConfig.id_dropout,
                 use_tags: bool = TrainConfig.use_tags, **kwargs):
        if output_dim <= 0:
            raise ValueError(f"output_dim must be positive, got {output_dim}")
        super().__init__(**kwargs)
        self.item_vocabulary = list(item_vocabulary)
        self.output_dim = output_dim
        self.hidden = tuple(hidden)
        self.use_item_id = use_item_id
        self.id_dim = id_dim
        self.id_dropout = id_dropout
        self.use_tags = use_tags
        self.item_id = IdEmbedding(self.item_vocabulary, id_dim, id_dropout) if use_item_id else None
        self.project = mlp(self.hidden, output_dim, name="item_mlp")

    def build(self, input_shape):
        """``input_shape``: ``{"item_id": [B], "vector": [B, d], "tags": [B, t]}`` (see :func:`item_input_shapes`)."""
        vector = tf.TensorShape(input_shape["vector"])
        width = vector[-1]
        if self.use_tags:
            width += tf.TensorShape(input_shape["tags"])[-1]
        if self.item_id is not None:
            self.item_id.build(tf.TensorShape(input_shape.get("item_id", vector[:-1])))
            width += self.id_dim
        self.project.build(tf.TensorShape([vector[0], width]))
        super().build(input_shape)

    def call(self, inputs, training=False):
        parts = [inputs["vector"]]
        if self.use_tags:
            parts.append(inputs["tags"])
        if self.item_id is not None:
            parts.append(self.item_id(inputs["item_id"], training=training) if "item_id" in inputs
                         else tf.zeros([tf.shape(inputs["vector"])[0], self.id_dim], self.compute_dtype))  # no id: an unknown one's zeros
        return tf.math.l2_normalize(self.project(tf.concat(parts, axis=-1)), axis=-1)

    def get_config(self):
        return {**super().get_config(), "item_vocabulary": self.item_vocabulary, "output_dim": self.output_dim, "hidden": self.hidden,
                "use_item_id": self.use_item_id, "id_dim": self.id_dim, "id_dropout": self.id_dropout, "use_tags": self.use_tags}
