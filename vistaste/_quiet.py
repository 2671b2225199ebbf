"""TensorFlow's log noise, silenced in one place (the CLI's ``--verbose`` turns it back on).

TensorFlow 2.20 talks through three channels, and each needs its own switch:

- **TSL C++ logging**, e.g. ``E ... cuda_platform.cc:51] failed call to cuInit: ... CUDA error`` on
  every command: follows ``TF_CPP_MIN_LOG_LEVEL``, read once, at the first message, so it is set
  before TensorFlow is imported.
- **Abseil C++ logging**, e.g. ``W0000 ... op_level_cost_estimator.cc:699] Error in PredictCost()``
  from grappler on the first query of a SavedModel (after "WARNING: All log messages before
  absl::InitializeLog() ..."): Abseil reads no environment variable and TensorFlow has no Python
  binding for it, so ``absl::SetMinLogLevel`` is called through ctypes.
- **Python loggers** ``tensorflow`` and ``absl``, e.g. tf_keras' ``WARNING:tensorflow:Model's
  __init__() arguments contain non-serializable objects`` (four per export) and SavedModel
  save/load notes: a filter on those two loggers.

One knob drives all three: TensorFlow's own ``TF_CPP_MIN_LOG_LEVEL`` (0 everything, 1 warnings and
errors, 2 errors, 3 nothing but fatal errors). Importing :mod:`vistaste` defaults it to 3; a value the
user has set is honoured, for every channel.

Why ctypes for Abseil: the alternatives are worse. Redirecting file descriptor 2 during ``import
tensorflow`` misses this message (grappler logs it when a graph is first run, long after the import),
and a permanent filtering pipe on descriptor 2 would sit between the user and every traceback. Abseil's
``SetMinLogLevel`` is its public API for exactly this; the one fragile part is the symbol's name, which
carries the Abseil release TensorFlow was built with (``lts_20250127`` for the pinned TF 2.20). If a
different TensorFlow build lacks the library or the symbol, only that channel stays as TensorFlow left it.

When: loading TensorFlow's library fixes the TSL level for the process (a static initialiser logs, and
the level is read then), so the library is not loaded early. Importing :mod:`vistaste` installs a one-shot
import hook that sets Abseil's level, from the variable's value at that moment, just before
``tensorflow`` itself is imported; so the CLI's ``--verbose``, applied after ``import vistaste`` but
before any command imports TensorFlow, reaches all three channels.
"""
from __future__ import annotations

import ctypes
import importlib.abc
import importlib.util
import logging
import os
import sys
from pathlib import Path

LEVELS = (0, 1, 2, 3)
QUIET, VERBOSE = 3, 1  # the default, and what --verbose asks for (warnings and errors)

# The Python-logging level below which records are dropped, per TF_CPP_MIN_LOG_LEVEL.
_PYTHON_THRESHOLDS = {0: logging.NOTSET, 1: logging.WARNING, 2: logging.ERROR, 3: logging.CRITICAL}
_PYTHON_LOGGERS = ("tensorflow", "absl")
_FRAMEWORK_LIBRARY = {"linux": "libtensorflow_framework.so.2", "darwin": "libtensorflow_framework.2.dylib"}
# absl::SetMinLogLevel(absl::LogSeverityAtLeast); kInfo=0 .. kFatal=3, the same scale as TF_CPP_MIN_LOG_LEVEL.
_ABSL_SET_MIN_LOG_LEVEL = "_ZN4absl12lts_2025012714SetMinLogLevelENS0_18LogSeverityAtLeastE"


class _BelowThreshold(logging.Filter):
    """Drops records below ``threshold``. A filter, not ``setLevel``: in interactive sessions
    TensorFlow sets its logger's level to INFO when it first builds it."""

    def __init__(self) -> None:
        super().__init__()
        self.threshold = logging.NOTSET

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= self.threshold


_FILTER = _BelowThreshold()


def _env_level() -> int | None:
    value = os.environ.get("TF_CPP_MIN_LOG_LEVEL", "").strip()
    return int(value) if value in {str(level) for level in LEVELS} else None


def _set_absl_level(level: int) -> None:
    """``absl::SetMinLogLevel`` in TensorFlow's framework library, which holds the process's one copy of
    Abseil. Loads that library if TensorFlow has not yet (only call it once the level is final)."""
    spec = importlib.util.find_spec("tensorflow")
    name = next((v for k, v in _FRAMEWORK_LIBRARY.items() if sys.platform.startswith(k)), None)
    if spec is None or not spec.submodule_search_locations or name is None:
        return
    path = Path(next(iter(spec.submodule_search_locations))) / name
    if not path.is_file():
        return
    try:
        setter = getattr(ctypes.CDLL(str(path)), _ABSL_SET_MIN_LOG_LEVEL)
    except (OSError, AttributeError):  # not loadable here, or built against another Abseil release
        return
    setter.argtypes, setter.restype = [ctypes.c_int], None
    setter(level)


class _BeforeTensorFlowImport(importlib.abc.MetaPathFinder):
    """One-shot: when ``tensorflow`` is first imported, set Abseil's level from TF_CPP_MIN_LOG_LEVEL as
    it is then, and step aside (it finds nothing; the normal finders import TensorFlow)."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname == "tensorflow":
            sys.meta_path.remove(self)
            level = _env_level()
            if level is not None:
                _set_absl_level(level)
        return None


_HOOK = _BeforeTensorFlowImport()


def set_tensorflow_log_level(level: int) -> None:
    """Show TensorFlow's messages at ``level`` and above: 0 all, 1 warnings and errors, 2 errors, 3 none.

    The TSL channel follows only if TensorFlow has not been imported yet (it reads the level once); the
    Abseil and Python channels follow at any time.

    Example: ``set_tensorflow_log_level(1)`` is what ``vistaste --verbose ...`` does.
    """
    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS} (as TF_CPP_MIN_LOG_LEVEL), got {level!r}")
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = str(level)
    _FILTER.threshold = _PYTHON_THRESHOLDS[level]
    for name in _PYTHON_LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
    if "tensorflow" in sys.modules:
        _set_absl_level(level)
    elif _HOOK not in sys.meta_path:
        sys.meta_path.insert(0, _HOOK)


def quiet_by_default() -> None:
    """Default ``TF_CPP_MIN_LOG_LEVEL`` to 3 and apply it to every channel. A value the user set (0-3) is
    kept; anything else is left for TensorFlow to interpret, and only the TSL channel sees it."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", str(QUIET))
    level = _env_level()
    if level is not None:
        set_tensorflow_log_level(level)
