"""Fine-tuning's network and what trains it: the in-batch softmax loss, SimCLR's augmentations, and
EfficientNet-Lite0 with its projection head split into the frozen trunk and the trained top
(:func:`build_network`); :func:`load_keras` rebuilds a saved fine-tuning. TensorFlow loads on first use.
"""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np

from vistaste.data.backbones import FINETUNED_MANIFEST
from vistaste.towers.finetune_config import FinetuneConfig

WEIGHTS_FILE = "weights.npz"
MIN_FLOAT = np.finfo(np.float32).min / 100.0  # a masked logit (as TFRS does): exp() of it is 0, its gradient is finite


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

