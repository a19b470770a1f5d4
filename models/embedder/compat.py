"""Every reach past a library's public API that the embedder makes, in one place.

Each has a test in tests/unit/test_embedder_compat.py that fails when the library changes
what it relies on; delete the workaround when its test says it is no longer needed.

* :func:`import_hub`: tensorflow-hub 0.16 imports ``pkg_resources.parse_version`` at import
  time (``tensorflow_hub/__init__.py``, ``_ensure_tf_install``); setuptools >= 81 no longer
  ships ``pkg_resources`` (upstream: https://github.com/tensorflow/hub/issues/934, fix
  proposed in tensorflow/hub#935, not released).
* :func:`basic_tokenizer_class`: tensorflow-text's ``BasicTokenizer``, the first stage of its
  ``BertTokenizer``, is not exported; it lives in ``tensorflow_text.python.ops.bert_tokenizer``.
* :func:`tflite_interpreter`: ``tf.lite.Interpreter`` is deprecated in favour of
  ``ai-edge-litert`` (a warning at every construction) but still ships with TensorFlow.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from typing import Any

HUB_NEEDS = frozenset({"parse_version"})
"""The names tensorflow-hub imports from ``pkg_resources``: what the stand-in must provide."""


def import_hub() -> Any:
    """Import and return ``tensorflow_hub``, standing in for ``pkg_resources`` if it is missing.

    The stand-in module holds ``parse_version`` from ``packaging``; it is in ``sys.modules``
    just for the import and then removed, so that nothing else sees it.
    """
    if "tensorflow_hub" in sys.modules:
        return sys.modules["tensorflow_hub"]
    shim = None
    if "pkg_resources" not in sys.modules and importlib.util.find_spec("pkg_resources") is None:
        from packaging.version import parse as parse_version

        shim = types.ModuleType("pkg_resources")
        shim.parse_version = parse_version  # type: ignore[attr-defined]
        sys.modules["pkg_resources"] = shim
    try:
        import tensorflow_hub as hub
    finally:
        if shim is not None and sys.modules.get("pkg_resources") is shim:
            del sys.modules["pkg_resources"]
    return hub


def basic_tokenizer_class() -> Any:
    """Return tensorflow-text's ``BasicTokenizer`` class (text to words: BertTokenizer's 1st stage)."""
    from tensorflow_text.python.ops.bert_tokenizer import BasicTokenizer

    return BasicTokenizer


def tflite_interpreter(model_path: str, threads: int) -> Any:
    """Return TensorFlow's TFLite interpreter for ``model_path``, without its deprecation warning.

    TensorFlow 2.21 still ships ``tf.lite.Interpreter`` (with XNNPACK, which runs the int8
    encoder's dynamically quantised matmuls) but warns at every construction that it moves to
    the ``ai-edge-litert`` package; that package's ``Interpreter`` has the same API, so this is
    the one line to change when TensorFlow drops it.
    """
    import warnings

    import tensorflow as tf

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*tf\.lite\.Interpreter is deprecated")
        return tf.lite.Interpreter(model_path=model_path, num_threads=threads)
