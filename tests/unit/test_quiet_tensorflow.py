"""Quiet TensorFlow start-up on CPUs (models/embedder/tfenv.py, called first by ``phrasestream``).

On a machine without a GPU no line about CUDA reaches the user: TensorFlow is not allowed to
probe CUDA, and the lines its libraries print while loading obey ``TF_CPP_MIN_LOG_LEVEL``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from models.embedder import tfenv

NOISE = re.compile(r"cuda|cuinit|absl::InitializeLog", re.IGNORECASE)
TF_VARIABLES = ("TF_CPP_MIN_LOG_LEVEL", "TF_ENABLED_DEVICE_TYPES", "CUDA_VISIBLE_DEVICES")

# What a user's `phrasestream train` does before the embedder runs: main() first, then
# TensorFlow, tensorflow-text and tensorflow-hub are imported and an op runs on the device.
THROUGH_THE_CLI = """
import contextlib, io
from streams.cli import main
with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
    main(["--help"])
"""
TENSORFLOW_WORK = """
import tensorflow as tf
import tensorflow_text
from models.embedder.compat import import_hub
import_hub()
print(float(tf.reduce_sum(tf.constant([1.0, 2.0]))), [d.device_type for d in tf.config.list_physical_devices()])
"""


def _run(code: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in TF_VARIABLES}  # as a user who set none
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def through_the_cli() -> subprocess.CompletedProcess[str]:
    """One process as a user's command runs it (set-up, TensorFlow, the hub, an op); it then
    prints the Keras modules loaded. Two tests read it: a TensorFlow start costs seconds of CPU."""
    return _run(THROUGH_THE_CLI + TENSORFLOW_WORK + "import sys; print(sorted({'keras', 'tf_keras'} & set(sys.modules)))")


@pytest.mark.skipif(tfenv.gpu_present(), reason="this machine has a GPU: TensorFlow may look for CUDA here")
def test_no_cuda_line_reaches_stderr_when_tensorflow_starts_through_the_cli(
    through_the_cli: subprocess.CompletedProcess[str],
) -> None:
    done = through_the_cli
    assert done.stdout.split()[0] == "3.0"  # TensorFlow ran, on the CPU
    assert "'CPU'" in done.stdout and "GPU" not in done.stdout
    noise = [line for line in done.stderr.splitlines() if NOISE.search(line)]
    assert not noise, "\n".join(noise)


@pytest.mark.skipif(tfenv.gpu_present(), reason="this machine has a GPU: TensorFlow may look for CUDA here")
def test_without_the_cli_set_up_this_tensorflow_does_print_cuda_lines() -> None:
    """The control: the test above can fail here (else TensorFlow is quiet by itself)."""
    done = _run(TENSORFLOW_WORK)
    if not NOISE.search(done.stderr):
        pytest.skip("this TensorFlow prints no CUDA line even without the set-up")
    assert re.search(r"cuInit|Could not find cuda drivers", done.stderr)


def test_the_set_up_imports_neither_tensorflow_nor_numpy() -> None:
    code = ("import sys; from models.embedder.tfenv import prepare_tensorflow; prepare_tensorflow(); "
            "print(sorted({'tensorflow', 'numpy', 'models.embedder.runtime'} & set(sys.modules)))")
    assert _run(code).stdout.strip() == "[]"


K = {"TF_USE_LEGACY_KERAS": "1"}


@pytest.mark.parametrize(("environ", "platform", "gpu", "want"), [
    ({}, "linux", False, {"TF_CPP_MIN_LOG_LEVEL": "2", "TF_ENABLED_DEVICE_TYPES": "CPU", **K}),
    ({}, "linux", True, {"TF_CPP_MIN_LOG_LEVEL": "2", **K}),
    ({}, "darwin", False, {"TF_CPP_MIN_LOG_LEVEL": "2", **K}),  # a Metal GPU has no /dev node
    ({"TF_CPP_MIN_LOG_LEVEL": "0"}, "linux", False, {"TF_ENABLED_DEVICE_TYPES": "CPU", **K}),
    ({"CUDA_VISIBLE_DEVICES": "0"}, "linux", False, {"TF_CPP_MIN_LOG_LEVEL": "2", **K}),
    ({"CUDA_VISIBLE_DEVICES": "-1"}, "linux", True, {"TF_CPP_MIN_LOG_LEVEL": "2", "TF_ENABLED_DEVICE_TYPES": "CPU", **K}),
    ({"CUDA_VISIBLE_DEVICES": ""}, "darwin", True, {"TF_CPP_MIN_LOG_LEVEL": "2", "TF_ENABLED_DEVICE_TYPES": "CPU", **K}),
    ({"TF_ENABLED_DEVICE_TYPES": "GPU,CPU", "TF_CPP_MIN_LOG_LEVEL": "3", "TF_USE_LEGACY_KERAS": "0"}, "linux", False, {}),
])
def test_the_variables_set_are_only_those_the_user_left_unset(
    environ: dict[str, str], platform: str, gpu: bool, want: dict[str, str]
) -> None:
    assert tfenv.tensorflow_environment(environ, platform, gpu) == want


def test_after_the_set_up_tensorflow_and_the_hub_load_one_keras(through_the_cli: subprocess.CompletedProcess[str]) -> None:
    assert through_the_cli.stdout.strip().splitlines()[-1] == "['tf_keras']"


def test_a_gpu_is_seen_by_its_device_node(tmp_path: Path) -> None:
    assert not tfenv.gpu_present(tmp_path)
    (tmp_path / "nvidia0").touch()
    assert tfenv.gpu_present(tmp_path)


ABSL_INFO = "I0000 00:00:1796543877.582089    9705 cudart_stub.cc:31] Could not find cuda drivers on your machine.\n"
ABSL_ERROR = "E0000 00:00:1796543888.459127    9787 cuda_platform.cc:52] failed call to cuInit: INTERNAL\n"
OLD_WARNING = "2025-09-17 14:44:05.157831: W external/local_xla/xla/tsl/cuda/cudart_stub.cc:32] no cudart\n"
PRE_INIT = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
ONEDNN_INT64 = ("E0000 00:00:1796545315.468753     456 util.cc:131] oneDNN supports DT_INT64 only on platforms with "
                "AVX-512. Falling back to the default Eigen-based implementation if present.\n")
OTHER_ERROR = "E0000 00:00:1796545315.468753     456 util.cc:131] oneDNN supports DT_HALF only on the moon.\n"


@pytest.mark.parametrize(("line", "hidden_from_level"), [
    (ABSL_INFO, 1), (ABSL_ERROR, 3), (OLD_WARNING, 2), (PRE_INIT, 1), (ONEDNN_INT64, 1), (OTHER_ERROR, 3),
    ("Traceback (most recent call last):\n", None), ("I0000 is not a log line\n", None),
])
def test_native_lines_are_hidden_below_tensorflows_level_and_other_lines_never(
    line: str, hidden_from_level: int | None
) -> None:
    hidden = [level for level in range(5) if tfenv.is_hidden(line, level)]
    assert hidden == ([] if hidden_from_level is None else list(range(hidden_from_level, 5)))


def test_the_filter_works_on_file_descriptor_2_and_lets_other_lines_through(capfd: pytest.CaptureFixture[str]) -> None:
    with tfenv.native_log_filter(level=2):
        os.write(2, ABSL_INFO.encode())
        os.write(2, b"a line of our own\n")
        os.write(2, ABSL_ERROR.encode())
    os.write(2, ABSL_INFO.encode())  # after the block: unfiltered again
    assert capfd.readouterr().err == "a line of our own\n" + ABSL_ERROR + ABSL_INFO


@pytest.mark.parametrize(("value", "level"), [("3", 3), ("0", 0), ("x", 0), ("-1", 0)])
def test_min_log_level_reads_tensorflows_variable(value: str, level: int) -> None:
    assert tfenv.min_log_level({"TF_CPP_MIN_LOG_LEVEL": value}) == level
    assert tfenv.min_log_level({}) == 0
