"""The int8 embedder: MiniLM's encoder with dynamic-range int8 weights, run by TFLite with XNNPACK.

Dynamic range: the weights of every dense layer (and the embedding tables) are stored as int8,
per output channel; at run time each matmul's activations are quantised per batch and the
product is taken in int8 (XNNPACK's dynamically quantised fully-connected kernels, which use
AVX512-VNNI or AVX-VNNI where the CPU has them), while layer norms, softmax, GELU and the
pooling stay float32. Only the encoder is converted: the tokeniser is tensorflow-text ops, which
TFLite cannot run, so the export's own ``tokenize`` function (TensorFlow) gives the word-piece
ids and mask, and the TFLite model turns them into the readout. It runs every layer on the
padded batch (``readout_padded``): packing's scatter has no TFLite kernel.

The file, ``encoder_int8.tflite`` (24 MB), is converted from the weights package (the same
graph code as the export) into the export folder the first time int8 is wanted, and its SHA-256
joins the export's manifest, so it is verified on every load like the SavedModel.
docs/embedder.md gives what it was measured to cost and gain.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np

from models.embedder.compat import tflite_interpreter
from models.embedder.graph import make_module
from models.embedder.spec import CLS_ID, SEP_ID
from models.embedder.tfenv import native_log_filter

INT8_FILE = "encoder_int8.tflite"
QUANTISATION = "dynamic-range int8 (TFLite Optimize.DEFAULT, TensorFlow's converter)"


def convert_int8(weights: dict[str, np.ndarray], vocab_path: Path) -> bytes:
    """Return the int8 TFLite model of the encoder: int32 ``input_ids`` and ``attention_mask`` in,
    float32 ``[batch, 384 * len(READOUT)]`` out (10-20 s on 2 cores)."""
    import tensorflow as tf

    module = make_module(weights, vocab_path)
    ids_mask = [tf.TensorSpec([None, None], tf.int32, name="input_ids"),
                tf.TensorSpec([None, None], tf.int32, name="attention_mask")]
    encoder = tf.function(module.readout_padded, input_signature=ids_mask)
    converter = tf.lite.TFLiteConverter.from_concrete_functions([encoder.get_concrete_function()], module)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]  # no representative data: dynamic range
    model: bytes = converter.convert()
    return model


class Int8Encoder:
    """The int8 encoder loaded in TFLite's interpreter: ``encoder(ids, mask)`` gives the readout.

    One interpreter, used by one call at a time (TFLite's interpreters are not thread-safe); it
    is resized to each batch's shape.
    """

    def __init__(self, path: Path, threads: int) -> None:
        self.path = path
        self._lock = threading.Lock()
        # TFLite applies XNNPACK at the first run and says so on stderr (an INFO line): run one
        # [CLS] [SEP] here, with that line held to TF_CPP_MIN_LOG_LEVEL like TensorFlow's own
        with native_log_filter():
            self._interpreter = tflite_interpreter(str(path), threads)
            self._run = self._interpreter.get_signature_runner()
            self(np.array([[CLS_ID, SEP_ID]]), np.ones((1, 2)))

    def __call__(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        with self._lock:
            out: dict[str, Any] = self._run(input_ids=np.asarray(ids, np.int32),
                                            attention_mask=np.asarray(mask, np.int32))
            (features,) = out.values()
            return np.array(features, dtype=np.float32)  # a copy: the interpreter reuses its buffers
