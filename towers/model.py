"""The joint two-tower model: TFRS retrieval task with in-batch softmax and logQ correction."""
from __future__ import annotations

import tensorflow as tf
import tensorflow_recommenders as tfrs
import tf_keras

from vistaste.towers.config import TrainConfig
from vistaste.towers.item_tower import PACKAGE, ItemTower, item_input_shapes
from vistaste.towers.user_tower import UserTower, user_input_shapes


def model_input_shapes(vector_dim: int, tag_dim: int, history_length: int) -> dict[str, dict[str, tf.TensorShape]]:
    """``{"user": ..., "item": ...}`` shapes for :meth:`TwoTowerModel.build` (batch dimension unknown).

    ``model.build(model_input_shapes(128, 12, 20))`` creates every weight, e.g. before ``load_weights``.
    """
    return {"user": user_input_shapes(vector_dim, tag_dim, history_length), "item": item_input_shapes(vector_dim, tag_dim)}


def global_candidates(items: tf.Tensor, probability: tf.Tensor | None, candidate_ids: tf.Tensor):
    """Under a strategy with several replicas (data-parallel training, ``towers/distributed.py``): every
    replica's in-batch candidates, gathered so each replica's softmax scores its own users against the
    whole global batch, as one machine does with the same batch; with one replica, the inputs unchanged.

    The gathered candidates are rotated so this replica's own come first, in order: the task's labels are
    the diagonal (user ``j``'s positive is candidate ``j``). The gradient of ``all_gather`` sums each
    replica's gradient for a candidate back onto the replica that computed it, so the summed update equals
    one machine's on the same global batch.
    """
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return items, probability, candidate_ids
    sizes = context.all_gather(tf.shape(items)[:1], axis=0)
    begin = tf.reduce_sum(sizes[:context.replica_id_in_sync_group])
    items = tf.roll(context.all_gather(items, axis=0), -begin, axis=0)
    candidate_ids = tf.roll(context.all_gather(tf.stop_gradient(candidate_ids), axis=0), -begin, axis=0)
    if probability is not None:
        probability = tf.roll(context.all_gather(tf.stop_gradient(probability), axis=0), -begin, axis=0)
    return items, probability, candidate_ids


@tf_keras.utils.register_keras_serializable(package=PACKAGE)
class TwoTowerModel(tfrs.Model):
    """``compute_loss`` scores each user against every item in the batch (in-batch negatives) and, where
    the features hold ``"negatives"`` (item-tower inputs of extra catalog items), against those too
    (mixed negative sampling; the input pipeline gives every candidate its probability under the mix).

    With ``logq_correction`` the task subtracts log(sampling probability) from each candidate's logit
    (Yi et al., RecSys 2019), so popular items are not under-ranked for being frequent negatives;
    ``remove_accidental_hits`` masks in-batch copies of the positive item.
    """

    def __init__(self, user_tower: UserTower, item_tower: ItemTower, temperature: float = TrainConfig.temperature,
                 logq_correction: bool = TrainConfig.logq_correction, remove_accidental_hits: bool = TrainConfig.remove_accidental_hits,
                 logq_strength: float = TrainConfig.logq_strength, **kwargs):
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        super().__init__(**kwargs)
        self.user_tower = user_tower
        self.item_tower = item_tower
        self.temperature = temperature
        self.logq_correction = logq_correction
        self.logq_strength = logq_strength
        self.remove_accidental_hits = remove_accidental_hits
        self.task = tfrs.tasks.Retrieval(temperature=temperature, remove_accidental_hits=remove_accidental_hits)

    def build(self, input_shape):
        """``input_shape``: ``{"user": <UserTower shapes>, "item": <ItemTower shapes>}`` (see :func:`model_input_shapes`)."""
        if not self.item_tower.built:
            self.item_tower.build(input_shape["item"])
        if not self.user_tower.built:
            self.user_tower.build(input_shape["user"])
        self.built = True

    def _assert_weights_created(self):
        # Keras refuses to list the weights of a model whose class defines build() until that build ran.
        # This model's weights are its towers', and training still builds them by calling them on data,
        # so they exist as soon as both towers are built, however that happened.
        if not (self.user_tower.built and self.item_tower.built):
            super()._assert_weights_created()

    def compute_loss(self, features, training=False):
        users = self.user_tower(features["user"], training=training)
        items = self.item_tower(features["item"], training=training)
        probability = self.correction(features["item"]["sampling_probability"])
        # Accidental hits are found by comparing every pair of candidate ids in the batch (B²). Integer
        # catalog rows, where the input pipeline provides them, compare faster than id strings
        # (benchmarks/train_throughput.py: 12.3k -> 20.5k examples/s at batch 512, 10.0k -> 11.6k at 4,096).
        candidate_ids = features["item"].get("row", features["item"]["item_id"])
        items, probability, candidate_ids = global_candidates(items, probability, candidate_ids)
        if "negatives" in features:  # mixed negative sampling: catalog items drawn uniformly, after the batch's own
            negatives = features["negatives"]
            items = tf.concat([items, self.item_tower(negatives, training=training)], axis=0)
            candidate_ids = tf.concat([candidate_ids, negatives.get("row", negatives["item_id"])], axis=0)
            if probability is not None:
                probability = tf.concat([probability, self.correction(negatives["sampling_probability"])], axis=0)
        return self.task(users, items, sample_weight=features["item"].get("sample_weight"), candidate_sampling_probability=probability,
                         candidate_ids=candidate_ids, compute_metrics=False)

    def correction(self, probability: tf.Tensor) -> tf.Tensor | None:
        """What the task's logQ correction divides by: each logit loses ``logq_strength * log(probability)``
        (``probability ** logq_strength``); None without the correction."""
        if not self.logq_correction:
            return None
        return probability if self.logq_strength == 1.0 else tf.pow(probability, self.logq_strength)

    def get_config(self):
        return {"user_tower": tf_keras.saving.serialize_keras_object(self.user_tower),
                "item_tower": tf_keras.saving.serialize_keras_object(self.item_tower),
                "shared_item_tower": self.user_tower.item_tower is self.item_tower, "temperature": self.temperature,
                "logq_correction": self.logq_correction, "remove_accidental_hits": self.remove_accidental_hits,
                "logq_strength": self.logq_strength, "name": self.name}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        item_tower = tf_keras.saving.deserialize_keras_object(config.pop("item_tower"))
        user_config = dict(config.pop("user_tower"))
        if config.pop("shared_item_tower", False):  # one item tower on both sides, as it was saved
            user_tower = UserTower.from_config({**user_config["config"], "item_tower": item_tower})
        else:
            user_tower = tf_keras.saving.deserialize_keras_object(user_config)
        return cls(user_tower, item_tower, **config)
