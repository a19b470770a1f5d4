"""TensorFlow's process set-up for a command: quiet logs, and no CUDA probe on a machine without a GPU.

Call :func:`prepare_tensorflow` first thing in an entry point, before anything imports
TensorFlow (``phrasestream``'s ``main`` and ``python -m models.embedder`` do). It

* sets ``TF_CPP_MIN_LOG_LEVEL=2`` (TensorFlow's C++ errors only) unless the user set it;
* on Linux without a GPU device node (``/dev/nvidia*``, WSL's ``/dev/dxg``), or when the user hid
  every GPU (``CUDA_VISIBLE_DEVICES`` empty or ``-1``), sets ``TF_ENABLED_DEVICE_TYPES=CPU`` so
  that TensorFlow creates CPU devices only and never calls ``cuInit``. (``CUDA_VISIBLE_DEVICES=-1``
  alone is not enough: TensorFlow 2.21 still calls ``cuInit`` and logs its failure as an error.)
  A value the user set for ``TF_ENABLED_DEVICE_TYPES`` is kept;
* filters stderr while ``tensorflow`` is first imported: the shared libraries log at load time,
  before TensorFlow reads ``TF_CPP_MIN_LOG_LEVEL`` (``Could not find cuda drivers on your
  machine``, ``oneDNN custom operations are on``, absl's ``All log messages before
  absl::InitializeLog()``), so :func:`native_log_filter` applies that level to those lines.
  Every other line goes through unchanged. ``TF_CPP_MIN_LOG_LEVEL=0`` shows them all again.

``load_embedder`` runs its first calls inside :func:`native_log_filter` too, for the one
:data:`FALSE_ALARMS` line TensorFlow logs as an error there.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.util
import os
import re
import sys
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

DEFAULT_LOG_LEVEL = "2"
"""TensorFlow's C++ log level when the user sets none: 0 all, 1 no INFO, 2 errors only, 3 none."""
GPU_DEVICE_GLOBS = ("nvidia*", "dxg")
"""Device nodes under ``/dev`` that show a GPU TensorFlow could use (NVIDIA; WSL2's GPU)."""

_SEVERITY = {"I": 0, "W": 1, "E": 2, "F": 3}
_NATIVE_LINE = re.compile(
    r"(?:(?P<absl>[IWEF])\d{4} \d\d:\d\d:\d+\.\d+ +\d+ "  # absl: I0000 00:00:1796543877.581734    9705
    r"|\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: (?P<tsl>[IWEF]) )"  # older TF: 2025-09-17 14:44:05.157831: I
    r"[\w./-]+:\d+\] "
)
_TFLITE_LINE = re.compile(r"(?P<tflite>VERBOSE|INFO|WARNING|ERROR): ")
"""TFLite's own log lines (``INFO: Created TensorFlow Lite XNNPACK delegate for CPU.``)."""
_TFLITE_SEVERITY = {"VERBOSE": 0, "INFO": 0, "WARNING": 1, "ERROR": 2}
_ABSL_PRE_INIT_NOTE = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"
FALSE_ALARMS = (
    # TensorFlow 2.21's oneDNN rewrite, at a function's first run, on CPUs with AVX-512 too: the
    # int64 ops just run on Eigen. Logged as an error, it is not one.
    "] oneDNN supports DT_INT64 only on platforms with AVX-512. Falling back to the default Eigen-based",
)
"""Native lines logged as errors that report no error; hidden like INFO lines (level >= 1)."""


def gpu_present(dev: Path = Path("/dev")) -> bool:
    """Say whether ``dev`` holds a GPU device node (:data:`GPU_DEVICE_GLOBS`)."""
    return any(next(dev.glob(pattern), None) is not None for pattern in GPU_DEVICE_GLOBS)


def tensorflow_environment(environ: Mapping[str, str], platform: str, gpu: bool) -> dict[str, str]:
    """Return the variables :func:`prepare_tensorflow` sets: only those ``environ`` lacks."""
    changes: dict[str, str] = {}
    if "TF_CPP_MIN_LOG_LEVEL" not in environ:
        changes["TF_CPP_MIN_LOG_LEVEL"] = DEFAULT_LOG_LEVEL
    if "TF_ENABLED_DEVICE_TYPES" not in environ:
        cuda = environ.get("CUDA_VISIBLE_DEVICES")
        gpus_hidden = cuda is not None and cuda.strip() in ("", "-1")
        if gpus_hidden or (cuda is None and platform.startswith("linux") and not gpu):
            changes["TF_ENABLED_DEVICE_TYPES"] = "CPU"
    if "TF_USE_LEGACY_KERAS" not in environ:
        # tensorflow-hub loads tf_keras (Keras 2); without this, TensorFlow also imports Keras 3 at
        # its own import, which nothing here uses (1.1 s more at every start of a worker or command)
        changes["TF_USE_LEGACY_KERAS"] = "1"
    return changes


def min_log_level(environ: Mapping[str, str] = os.environ) -> int:
    """Return ``TF_CPP_MIN_LOG_LEVEL`` as TensorFlow reads it (0 when unset or not a number)."""
    try:
        return max(0, int(environ.get("TF_CPP_MIN_LOG_LEVEL", "0")))
    except ValueError:
        return 0


def is_hidden(line: str, level: int) -> bool:
    """Say whether a native log ``line`` is below ``level`` (TensorFlow's ``TF_CPP_MIN_LOG_LEVEL``)."""
    if line.rstrip("\r\n") == _ABSL_PRE_INIT_NOTE or any(alarm in line for alarm in FALSE_ALARMS):
        return level >= 1
    match = _NATIVE_LINE.match(line)
    if match is not None:
        return _SEVERITY[match.group("absl") or match.group("tsl")] < level
    tflite = _TFLITE_LINE.match(line)
    return tflite is not None and _TFLITE_SEVERITY[tflite.group("tflite")] < level


def _pump(read_fd: int, out_fd: int, level: int) -> None:
    with open(read_fd, "rb") as pipe:
        for raw in pipe:
            if not is_hidden(raw.decode("utf-8", "replace"), level):
                view = memoryview(raw)
                while view:
                    view = view[os.write(out_fd, view):]


@contextlib.contextmanager
def native_log_filter(level: int | None = None) -> Iterator[None]:
    """While the block runs, pass file descriptor 2 through :func:`is_hidden` at ``level``.

    ``level`` defaults to :func:`min_log_level`. The filter works below Python (C++ libraries
    write to the descriptor), line by line as they come; at level 0, or if descriptor 2 cannot
    be redirected, the block runs unfiltered.
    """
    level = min_log_level() if level is None else level
    try:
        sys.stderr.flush()
        saved = os.dup(2) if level > 0 else -1
    except (OSError, ValueError):
        saved = -1
    if saved < 0:
        yield
        return
    read_fd, write_fd = os.pipe()
    os.dup2(write_fd, 2)
    os.close(write_fd)
    pump = threading.Thread(target=_pump, args=(read_fd, saved, level), name="tf-log-filter", daemon=True)
    pump.start()
    try:
        yield
    finally:
        with contextlib.suppress(OSError, ValueError):
            sys.stderr.flush()
        os.dup2(saved, 2)  # closes the pipe's last write end: the pump reads to its end and stops
        pump.join(timeout=5.0)
        if not pump.is_alive():  # else a child still holds the pipe: the pump keeps ``saved``
            os.close(saved)


class _QuietLoader(importlib.abc.Loader):
    """Run the real loader of ``tensorflow`` inside :func:`native_log_filter`."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def create_module(self, spec: Any) -> ModuleType | None:
        module: ModuleType | None = self.inner.create_module(spec)
        return module

    def exec_module(self, module: ModuleType) -> None:
        try:
            with native_log_filter():
                self.inner.exec_module(module)
        finally:
            module.__loader__ = self.inner
            if module.__spec__ is not None:
                module.__spec__.loader = self.inner


class _QuietFirstImport(importlib.abc.MetaPathFinder):
    """Hand the first import of ``tensorflow`` to :class:`_QuietLoader`; then step aside."""

    def find_spec(self, fullname: str, path: Sequence[str] | None = None, target: ModuleType | None = None) -> Any:
        if fullname != "tensorflow":
            return None
        with contextlib.suppress(ValueError):
            sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is not None and spec.loader is not None:
            spec.loader = _QuietLoader(spec.loader)
        return spec


def prepare_tensorflow() -> dict[str, str]:
    """Set TensorFlow's variables (the user's values win) and quiet its first import; return what was set.

    Call it before anything imports TensorFlow; calling it again does no harm.
    """
    changes = tensorflow_environment(os.environ, sys.platform, gpu_present())
    os.environ.update(changes)
    if "tensorflow" not in sys.modules and not any(isinstance(f, _QuietFirstImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietFirstImport())
    return changes
