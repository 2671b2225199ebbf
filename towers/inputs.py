"""The one map from item rows to tower inputs: training's input pipeline, evaluation, export and serving
all call these, so a user's features are built one way everywhere (tests/test_one_path.py checks the
exported model against training)."""
from __future__ import annotations

import tensorflow as tf

from vistaste.towers.features import PAD


def user_inputs(user_id, history_rows, item_vectors, item_tags) -> dict[str, tf.Tensor]:
    """User-tower inputs from history item rows ``[B, L]`` (PAD-left), item by item: ``history_items``
    holds the vector and tags of each distinct row (zeros for PAD), ``history_index`` ``[B, L]`` the
    item of each slot, ``history_mask`` the real slots. The tower embeds each distinct item once."""
    rows = tf.convert_to_tensor(history_rows, tf.int64)
    distinct, index = tf.unique(tf.reshape(rows, [-1]))
    known = tf.cast(distinct != PAD, tf.float32)[:, None]
    safe = tf.maximum(distinct, 0)
    return {"user_id": tf.convert_to_tensor(user_id, tf.string), "history_mask": rows != PAD,
            "history_index": tf.reshape(index, tf.shape(rows)),
            "history_items": {"vector": tf.gather(item_vectors, safe) * known, "tags": tf.gather(item_tags, safe) * known}}


def item_inputs(item_ids, item_vectors, item_tags, rows) -> dict[str, tf.Tensor]:
    """Item-tower inputs for item ``rows`` of the row-aligned ids, vectors and tags."""
    rows = tf.convert_to_tensor(rows, tf.int64)
    return {"item_id": tf.gather(item_ids, rows), "vector": tf.gather(item_vectors, rows), "tags": tf.gather(item_tags, rows)}
