"""The one map from item rows to tower inputs: training's input pipeline, evaluation, export and serving
all call these, so a user's features are built one way everywhere (tests/test_contracts.py checks the
exported model against training)."""
from __future__ import annotations

import tensorflow as tf

from vistaste.towers.features import PAD


def user_inputs(user_id, history_rows, item_vectors, item_tags) -> dict[str, tf.Tensor]:
    """User-tower inputs from history item rows ``[B, L]`` (PAD-left): the items' vectors and tags, zeroed
    at padded slots, the mask, and the rows themselves (the tower embeds each distinct item once)."""
    rows = tf.convert_to_tensor(history_rows, tf.int64)
    mask = rows != PAD
    safe = tf.maximum(rows, 0)
    maskf = tf.cast(mask, tf.float32)[..., None]
    return {"user_id": tf.convert_to_tensor(user_id, tf.string), "history": tf.gather(item_vectors, safe) * maskf,
            "history_tags": tf.gather(item_tags, safe) * maskf, "history_mask": mask, "history_rows": rows}


def item_inputs(item_ids, item_vectors, item_tags, rows) -> dict[str, tf.Tensor]:
    """Item-tower inputs for item ``rows`` of the row-aligned ids, vectors and tags."""
    rows = tf.convert_to_tensor(rows, tf.int64)
    return {"item_id": tf.gather(item_ids, rows), "vector": tf.gather(item_vectors, rows), "tags": tf.gather(item_tags, rows)}
