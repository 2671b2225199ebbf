"""TensorFlow's log noise is off by default and comes back with `--verbose` (vistaste/_quiet.py).

Each channel is triggered for real in a fresh interpreter (TensorFlow reads its C++ level once per
process): a tf.function over an unknown-rank Softmax makes grappler log ``Error in PredictCost()``
through Abseil's C++ logging, and the ``tensorflow`` Python logger gets a warning.
"""
import os
import re
import subprocess
import sys
import textwrap

import pytest
from typer.testing import CliRunner

from vistaste import _quiet
from vistaste.apps.cli import app

SCRIPT = textwrap.dedent("""
    import sys
    import vistaste
    if len(sys.argv) > 1:
        vistaste._quiet.set_tensorflow_log_level(int(sys.argv[1]))
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec(shape=None, dtype=tf.float32)])
    def softmax(x):
        return tf.nn.softmax(x)

    softmax(tf.constant([[1.0, 2.0]]))
    tf.get_logger().warning("python-channel")
""")
# TSL ("2026-01-01 12:00:00.000000: E file.cc:1] ...") and Abseil ("W0000 00:00:... file.cc:1] ...") lines.
C_LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\d [\d:.]+: [IWEF] |[IWEF]\d{4} |WARNING: All log messages before absl)")


def _stderr(*args: str) -> str:
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    done = subprocess.run([sys.executable, "-c", SCRIPT, *args], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return done.stderr


@pytest.mark.e2e
def test_tensorflow_is_quiet_by_default_and_level_1_brings_warnings_back():
    quiet = _stderr()
    assert [line for line in quiet.splitlines() if C_LOG_LINE.match(line)] == []
    assert "python-channel" not in quiet
    loud = _stderr(str(_quiet.VERBOSE))
    assert "op_level_cost_estimator" in loud and "PredictCost" in loud  # Abseil C++
    assert "WARNING:tensorflow:python-channel" in loud  # Python logger


def test_verbose_option_sets_the_level_before_any_command(monkeypatch):
    calls = []
    monkeypatch.setattr(_quiet, "set_tensorflow_log_level", calls.append)
    assert CliRunner().invoke(app, ["validate", "--help"]).exit_code == 0
    assert calls == []
    assert CliRunner().invoke(app, ["--verbose", "validate", "--help"]).exit_code == 0
    assert calls == [_quiet.VERBOSE]


def test_level_is_checked():
    with pytest.raises(ValueError, match="got 5"):
        _quiet.set_tensorflow_log_level(5)
