"""vistaste: personalized visual discovery with a two-tower recommender.

Subpackages (imports flow one way): ``vistaste.data`` <- ``vistaste.towers`` <- ``vistaste.serving``.
"""
import os as _os

# TFRS 0.7.7 is Keras-2 code: tf.keras must resolve to tf_keras, which TensorFlow decides at first import.
_os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"
