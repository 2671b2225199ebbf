"""EfficientNet-Lite0 as an ONNX graph built straight from the checkpoint, run by onnxruntime.

The fast CPU path for `vistaste embed` (about 2x the Keras port's images/s on 2 cores): batch norms
are folded into the convolutions, TF "SAME" padding is ONNX ``auto_pad=SAME_UPPER`` (extra pixel at the
bottom/right), and preprocessing ((x - 127) / 128, NHWC -> NCHW) is part of the graph, so it takes
uint8 RGB images as they are decoded. The network is the same as :mod:`vistaste.data.efficientnet_lite`
(which stays the trainable Keras version); a test checks the two agree.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from vistaste.data.efficientnet_arch import BLOCKS, BN_EPSILON, FEATURE_DIM, IMAGE_SIZE, PIXEL_MEAN, PIXEL_SCALE, STAGES

OPSET = 17


class _GraphBuilder:
    def __init__(self, state: dict[str, np.ndarray]):
        self.state, self.nodes, self.initializers, self.count = state, [], [], 0

    def constant(self, name: str, value: np.ndarray) -> str:
        self.initializers.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(self, op: str, inputs: list[str], **attrs) -> str:
        self.count += 1
        out = f"{op.lower()}_{self.count}"
        self.nodes.append(helper.make_node(op, inputs, [out], **attrs))
        return out

    def conv_bn(self, x: str, conv: str, bn: str, stride: int = 1, groups: int = 1) -> str:
        """Convolution with its batch norm folded in: W * g/sqrt(v+eps), b = beta - mean * g/sqrt(v+eps)."""
        weight = self.state[f"{conv}.weight"]
        scale = self.state[f"{bn}.weight"] / np.sqrt(self.state[f"{bn}.running_var"] + BN_EPSILON)
        folded = (weight * scale[:, None, None, None]).astype(np.float32)
        bias = (self.state[f"{bn}.bias"] - self.state[f"{bn}.running_mean"] * scale).astype(np.float32)
        w, b = self.constant(f"{conv}.w", folded), self.constant(f"{conv}.b", bias)
        k = weight.shape[-1]
        return self.node("Conv", [x, w, b], kernel_shape=[k, k], strides=[stride, stride], group=groups, auto_pad="SAME_UPPER")

    def relu6(self, x: str) -> str:
        return self.node("Clip", [x, "zero", "six"])


def build_onnx_model(state: dict[str, np.ndarray], include_top: bool = False, image_size: int = IMAGE_SIZE, head: int = 0,
                     normalize: bool = False, trunk_blocks: int | None = None) -> onnx.ModelProto:
    """uint8 RGB ``[batch, image_size, image_size, 3]`` -> pooled features ``[batch, 1280]`` (or ImageNet logits).

    For a fine-tuned network (:mod:`vistaste.towers.finetune`): ``image_size`` it was trained at, ``head``
    dense layers ``_head.{i}.weight/bias`` (PyTorch layout, ReLU between them) after the pooling, and
    ``normalize`` to L2-normalise the output (``x / max(|x|, 1e-6)``).

    ``trunk_blocks``: stop after MBConv blocks ``0..trunk_blocks-1`` and return their feature map, NHWC
    ``[batch, h, w, channels]`` as Keras lays it out: the frozen trunk fine-tuning caches once per item.
    """
    if include_top and head:
        raise ValueError("give include_top (ImageNet logits) or a projection head, not both")
    if trunk_blocks is not None and (include_top or head or normalize or not 1 <= trunk_blocks < BLOCKS):
        raise ValueError(f"trunk_blocks must be in 1..{BLOCKS - 1}, without a top, head or normalisation")
    g = _GraphBuilder(state)
    g.constant("zero", np.array(0.0, np.float32)), g.constant("six", np.array(6.0, np.float32))
    g.constant("mean", np.array(PIXEL_MEAN, np.float32)), g.constant("scale", np.array(PIXEL_SCALE, np.float32))
    x = g.node("Cast", ["images"], to=TensorProto.FLOAT)
    x = g.node("Div", [g.node("Sub", [x, "mean"]), "scale"])
    x = g.node("Transpose", [x], perm=[0, 3, 1, 2])
    x = g.relu6(g.conv_bn(x, "_conv_stem", "_bn0", stride=2))
    channels, block = 32, 0
    for expand, _kernel, stride, out_channels, repeats in STAGES:
        for repeat in range(repeats):
            if block == trunk_blocks:
                return _finish(g, g.node("Transpose", [x], perm=[0, 2, 3, 1]), image_size, [None, None, None, channels])
            prefix, inp, s = f"_blocks.{block}.", x, stride if repeat == 0 else 1
            if expand != 1:
                x = g.relu6(g.conv_bn(x, prefix + "_expand_conv", prefix + "_bn0"))
            hidden = channels * expand
            x = g.relu6(g.conv_bn(x, prefix + "_depthwise_conv", prefix + "_bn1", stride=s, groups=hidden))
            x = g.conv_bn(x, prefix + "_project_conv", prefix + "_bn2")
            if s == 1 and channels == out_channels:
                x = g.node("Add", [x, inp])
            channels, block = out_channels, block + 1
    x = g.relu6(g.conv_bn(x, "_conv_head", "_bn1"))
    x = g.node("Flatten", [g.node("GlobalAveragePool", [x])])
    output_dim = FEATURE_DIM
    if include_top:
        x = g.node("Gemm", [x, g.constant("fc.w", state["_fc.weight"]), g.constant("fc.b", state["_fc.bias"])], transB=1)
        output_dim = state["_fc.bias"].shape[0]
    for layer in range(head):
        if layer:
            x = g.node("Relu", [x])
        weight, bias = state[f"_head.{layer}.weight"], state[f"_head.{layer}.bias"]
        x = g.node("Gemm", [x, g.constant(f"head.{layer}.w", weight), g.constant(f"head.{layer}.b", bias)], transB=1)
        output_dim = bias.shape[0]
    if normalize:
        norm = g.node("Max", [g.node("ReduceL2", [x], axes=[1], keepdims=1), g.constant("norm_floor", np.array(1e-6, np.float32))])
        x = g.node("Div", [x, norm])
    return _finish(g, x, image_size, [None, output_dim])


def _finish(g: "_GraphBuilder", x: str, image_size: int, output_shape: list) -> onnx.ModelProto:
    """The graph with ``x`` as its output ``features`` (``output_shape``), checked."""
    g.nodes.append(helper.make_node("Identity", [x], ["features"]))
    graph = helper.make_graph(g.nodes, "efficientnet_lite0",
                              [helper.make_tensor_value_info("images", TensorProto.UINT8, [None, image_size, image_size, 3])],
                              [helper.make_tensor_value_info("features", TensorProto.FLOAT, output_shape)], g.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="vistaste")
    onnx.checker.check_model(model)
    return model


def inference_session(model: onnx.ModelProto, threads: int | None = None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
