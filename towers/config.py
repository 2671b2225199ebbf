"""Training hyperparameters: one dataclass, free of TensorFlow so the CLI can show its defaults cheaply."""
from __future__ import annotations

import dataclasses

from vistaste.data.split import SplitRule

VALIDATION_METRIC = "ndcg@50"  # early stopping and epoch choice: the top of the list, over enough ranks to be stable
REFIT_MODES = ("before-test", "all", "none")
# ANN candidates per query that serving re-ranks (trend boost, diversity); evaluation restricts the trend
# boost to as many, so what is measured is what is served.
CANDIDATES = 200


@dataclasses.dataclass
class TrainConfig(SplitRule):
    """Every knob of a training run; saved with the model. The split fields (what is held out, validation
    carved before it: ``test_fraction``, ``test_days``, ``test_start``, ``leave_last``, ``val_fraction``,
    ``min_val_users``) are inherited from :class:`~vistaste.data.split.SplitRule`."""

    output_dim: int = 64
    # Chosen on validation (MovieLens-100K's validation slice and the built-in world's; the README's
    # "Choosing the defaults"): a linear projection and learning rate 1e-3 (hidden layers overfit within
    # one epoch on real logs); a user-id embedding (dropout 0.5), which on today's towers raised validation
    # nDCG@50 on all three seeds and widened the catalog the towers reach.
    hidden: tuple[int, ...] = ()
    history_length: int = 20
    history_units: int = 64
    input_dim: int = 128  # raw item vectors wider than this are reduced by PCA fitted on the catalog
    whiten: bool = False  # whitening gives low-variance (noise) components the same weight as the top ones
    # Hybrid item tower: an id embedding for items with at least `min_item_interactions` training
    # positives, content (vector + tags) for every item: new items still work, and items with identical
    # metadata are told apart once they have clicks.
    use_item_id: bool = True
    min_item_interactions: int = 5
    use_user_id: bool = True
    id_dim: int = 32
    id_dropout: float = 0.5
    use_tags: bool = True
    history_in_item_space: bool = True  # embed history items with the (shared) item tower, see UserTower
    # Softmax temperature on cosine scores. 0.1 since session 11 (was 0.05), chosen on validation across both
    # kinds of data (seeds 0-2): the best validation nDCG@50 on MovieLens-100K (0.165 vs 0.163 at 0.05 and 0.162
    # at 0.2) and higher on the built-in worlds (test warm recall@50 0.320 -> 0.349 on the world before the
    # behaviours). 0.2 does more for the worlds (0.403) but costs the towers alone a seventh on MovieLens-100K
    # (test nDCG@10 0.187 -> 0.164, hidden by the trend boost). README "Choosing the defaults". `vistaste tune`
    # chooses it per dataset on validation (towers/tuning.py): 0.2 on every built-in world, 0.05-0.2 on MovieLens-100K.
    temperature: float = 0.1
    # Recent clicks say more about what users want next: examples weigh 2^(-age / half-life), age from the
    # point of prediction (the log's last click; leave-last: the user's own last click). None: all weigh the
    # same. 14 days was chosen on validation (MovieLens-100K: validation nDCG@50 of the served ranking 0.195
    # -> 0.210 over none, 3, 7, 30, 60, 120 days; the built-in world: unchanged within seed noise); README
    # "Choosing the defaults".
    recency_half_life_days: float | None = 14.0
    logq_correction: bool = True
    logq_strength: float = 1.0  # the correction subtracts strength * log(sampling probability)
    remove_accidental_hits: bool = True
    # Mixed negative sampling (Yang et al., WWW 2020): beside the batch's own items, this many catalog items
    # drawn uniformly at random each step are scored as negatives, so items rarely or never clicked are
    # pushed down too, not only the popular ones in-batch sampling brings. The logQ correction then uses
    # each item's chance of being a candidate under the mix. 0: in-batch negatives only.
    uniform_negatives: int = 0
    batch_size: int = 512
    learning_rate: float = 1e-3
    epochs: int = 30
    patience: int = 4
    # After choosing the epoch count on validation, retrain from scratch with it on: everything before the
    # test cut ("before-test": what `evaluate` measures), every event ("all": to ship), or keep the
    # train-only model ("none").
    refit: str = "before-test"
    # Choose the trend boost (half-life, tag share, weight) on validation and ship it with the model
    # (towers/trend_boost.py); False: no boost, the ranking is the model's alone.
    trend_boost: bool = True
    # A breadth floor on that choice: a boost is taken only if the validation users' top 10s still cover at
    # least this many times the catalog share most-popular's top 10s cover for them (0: no floor). Without
    # it, validation nDCG on MovieLens-100K chose boosts that turned the feed into the trending list (test
    # coverage@10 1.1x most-popular's at nDCG@10 0.239). With the collaborative term below (seeds 0-2,
    # settings_sweep_cf.json): floor 2, 0.237 at 2.5x; 2.5, 2.9-3.3x; 3, 0.223 at 3.3x on every seed (0.216
    # at 3.4x with the content map, real_data_fraction_cf.json; 0.222 at 3.3x in session 15's run). Through the
    # SavedModel alone (as_a_user_floors.json) 3 gave 2.9-3.2x and 3.25 every seed 3.1-3.4x, at 9% less nDCG@10.
    # Before that term a floor of 3 left no boost (0.187 at 2.9x) and 2 was the default. README, real-data results.
    min_breadth: float = 3.0
    # Beside the towers, a collaborative term (implicit ALS factors, towers/collaborative.py) whose weight is
    # chosen on validation (0 when it does not help): on MovieLens-100K's temporal split it is what makes
    # the ranking both accurate and broad (benchmarks/cf_blend.py). False: the towers alone.
    collaborative: bool = True
    seed: int = 0

    def __post_init__(self):
        self.hidden = tuple(self.hidden)
        for name in ("output_dim", "history_length", "batch_size", "epochs", "input_dim", "patience"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.recency_half_life_days is not None and self.recency_half_life_days <= 0:
            raise ValueError(f"recency_half_life_days must be positive or None, got {self.recency_half_life_days}")
        if self.min_breadth < 0:
            raise ValueError(f"min_breadth must be >= 0, got {self.min_breadth}")
        if self.uniform_negatives < 0:
            raise ValueError(f"uniform_negatives must be >= 0, got {self.uniform_negatives}")
        if self.min_item_interactions < 1:
            raise ValueError(f"min_item_interactions must be >= 1, got {self.min_item_interactions}")
        if self.refit not in REFIT_MODES:
            raise ValueError(f"refit must be one of {', '.join(REFIT_MODES)}, got {self.refit!r}")
        self.split_spec()  # validates the split rule

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        """From a saved config; a first-version model (``val_days``, no split rule) is named as such."""
        if "val_days" in values:
            raise ValueError("this model was trained by an earlier vistaste (days-only split, no refit); retrain it")
        return cls(**values)
