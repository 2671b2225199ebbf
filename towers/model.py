"""The joint two-tower model: TFRS retrieval task with in-batch softmax and logQ correction."""
from __future__ import annotations

import tensorflow_recommenders as tfrs

from vistaste.towers.item_tower import ItemTower
from vistaste.towers.user_tower import UserTower


class TwoTowerModel(tfrs.Model):
    """``compute_loss`` scores each user against every item in the batch (in-batch negatives).

    With ``logq_correction`` the task subtracts log(sampling probability) from each candidate's logit
    (Yi et al., RecSys 2019), so popular items are not under-ranked for being frequent negatives;
    ``remove_accidental_hits`` masks in-batch copies of the positive item.
    """

    def __init__(self, user_tower: UserTower, item_tower: ItemTower, temperature: float = 0.05, logq_correction: bool = True,
                 remove_accidental_hits: bool = True):
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        super().__init__()
        self.user_tower = user_tower
        self.item_tower = item_tower
        self.temperature = temperature
        self.logq_correction = logq_correction
        self.task = tfrs.tasks.Retrieval(temperature=temperature, remove_accidental_hits=remove_accidental_hits)

    def compute_loss(self, features, training=False):
        users = self.user_tower(features["user"], training=training)
        items = self.item_tower(features["item"], training=training)
        probability = features["item"]["sampling_probability"] if self.logq_correction else None
        # Accidental hits are found by comparing every pair of candidate ids in the batch (B²). Integer
        # catalog rows, where the input pipeline provides them, compare faster than id strings
        # (benchmarks/train_throughput.py: 12.3k -> 20.5k examples/s at batch 512, 10.0k -> 11.6k at 4,096).
        candidate_ids = features["item"].get("row", features["item"]["item_id"])
        return self.task(users, items, candidate_sampling_probability=probability, candidate_ids=candidate_ids, compute_metrics=False)
