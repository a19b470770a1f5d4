"""Stand-ins shared by the unit tests (pytest puts this folder on ``sys.path``)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

from models.embedder import READOUT, quantise
from models.heads import BLOCK_DIM


class ReadoutEmbedder:
    """Stand in for ``models.embedder.Embedder``'s training and serving side, without TensorFlow.

    Each word has a fixed random vector per readout block; a text's block is the normalised mean
    of its words' (so phrases that share words share features). Texts with ``zzz`` have half
    of their word pieces unknown. Every call of ``features_batch`` is recorded in ``calls``.
    """

    readout = READOUT

    def __init__(self, version: str = "fake-v1") -> None:
        self.version = version
        self.calls: list[list[str]] = []

    @property
    def feature_dim(self) -> int:
        return BLOCK_DIM * len(self.readout)

    def _word(self, word: str) -> np.ndarray:
        seed = int.from_bytes(hashlib.sha256(word.encode()).digest()[:8], "little")
        return np.random.default_rng(seed).normal(size=self.feature_dim)

    def features_batch(self, texts: Sequence[str]) -> np.ndarray:
        self.calls.append(list(texts))
        out = np.zeros((len(texts), self.feature_dim), dtype=np.float32)
        for i, text in enumerate(texts):
            words = text.split() or ["<empty>"]
            v = np.mean([self._word(w) for w in words], axis=0).reshape(len(self.readout), BLOCK_DIM)
            out[i] = (v / np.linalg.norm(v, axis=1, keepdims=True)).reshape(-1)
        return quantise(out)

    def unknown_rates(self, texts: Sequence[str]) -> np.ndarray:
        return np.array([0.5 if "zzz" in t else 0.0 for t in texts])
