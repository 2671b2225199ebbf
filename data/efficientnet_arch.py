"""EfficientNet-Lite0's architecture constants, without TensorFlow: shared by the Keras network
(:mod:`vistaste.data.efficientnet_lite`) and the ONNX graph built from the same weights
(:mod:`vistaste.data.efficientnet_onnx`), so embedding on onnxruntime never imports TensorFlow."""

# (expand ratio, kernel, stride, output channels, repeats) per stage, from the EfficientNet-B0 recipe.
STAGES = ((1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3), (6, 5, 1, 112, 3), (6, 5, 2, 192, 4), (6, 3, 1, 320, 1))
BLOCKS = sum(stage[-1] for stage in STAGES)  # 16 MBConv blocks, 0..15
BN_EPSILON = 1e-3
FEATURE_DIM = 1280
IMAGE_SIZE = 224
# Preprocessing the checkpoint was trained with: RGB, bilinear resize to 224, (x - 127) / 128.
PIXEL_MEAN, PIXEL_SCALE = 127.0, 128.0
