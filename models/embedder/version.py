"""The embedder's version: a declared graph version and the digest of the weights it runs.

The version names the export folder (``<models_root>/embedder/<version>/``), the feature cache
(``<models_root>/embcache/<version>/``), the embedding cache's keys, and every head's
``embedder_version``: a head is served only by the embedder version it was trained on. So it
must change exactly when the computed function does, and never because a file was edited,
split or commented. docs/embedder.md says when to bump :data:`GRAPH_VERSION`.
"""

from __future__ import annotations

import re

from models.embedder.weights import weights_digest

GRAPH_VERSION = 1
"""Bump on purpose (by one) when a change alters what the embedder computes for some text:
tokenisation (normalisation, word splitting, word pieces, truncation), the encoder graph, the
pooling or the readout (:data:`~models.embedder.spec.READOUT`), normalisation, the float16
rounding of features (``quantise``) or how a precision computes (``_dense``, the int8
conversion in :mod:`models.embedder.int8`). Not for a
refactor, a move, a comment, a speed-up that computes the same values, or the weights (they
have their own digest). Every trained head must then be trained again."""

VERSION_PREFIX = "minilm-l6-v2-tf-"
DIGEST_CHARS = 12


def compute_version(graph_version: int, weights_sha256: str) -> str:
    """Return ``minilm-l6-v2-tf-g<graph_version>-<first 12 hex digits of weights_sha256>``.

    >>> compute_version(1, "0123456789abcdef" * 4)
    'minilm-l6-v2-tf-g1-0123456789ab'
    """
    if isinstance(graph_version, bool) or not isinstance(graph_version, int) or graph_version < 1:
        raise ValueError(f"graph version must be a positive int, not {graph_version!r}")
    if not re.fullmatch(r"[0-9a-f]{64}", weights_sha256):
        raise ValueError(f"weights digest must be 64 lower-case hex digits, not {weights_sha256!r}")
    return f"{VERSION_PREFIX}g{graph_version}-{weights_sha256[:DIGEST_CHARS]}"


def current_version() -> str:
    """Return the version that :data:`GRAPH_VERSION` and the installed weights give (no TensorFlow)."""
    return compute_version(GRAPH_VERSION, weights_digest())
