"""vistaste: personalized visual discovery with a two-tower recommender.

Subpackages (imports flow one way, see ARCHITECTURE.md): ``vistaste.data`` <- ``vistaste.towers`` <-
``vistaste.serving`` (the product: training and the online path) <- ``vistaste.bench`` (the built-in world,
simulator and experiments) <- ``vistaste.apps`` (CLI, demo, gallery).
"""
import os as _os

# TFRS 0.7.7 is Keras-2 code: tf.keras must resolve to tf_keras, which TensorFlow decides at first import.
_os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

# TensorFlow's C++ and Python log noise: off unless TF_CPP_MIN_LOG_LEVEL or `vistaste --verbose` asks for it.
from vistaste import _quiet  # noqa: E402  (stdlib only; TensorFlow is not imported here)

_quiet.quiet_by_default()

__version__ = "0.1.0"
