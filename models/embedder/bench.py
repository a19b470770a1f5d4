"""How fast the embedder runs: :func:`measure_throughput`, used by ``make bench`` and the tests."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np


class FeatureSource(Protocol):
    """What :func:`measure_throughput` times: an ``Embedder``, or anything that embeds like it."""

    def features_batch(self, texts: Sequence[str]) -> np.ndarray: ...


def measure_throughput(embedder: FeatureSource, texts: Sequence[str], batch_size: int, repeats: int = 3,
                       clock: Callable[[], float] = time.perf_counter) -> float:
    """Return phrases/s of ``embedder.features_batch`` over ``texts`` in batches of ``batch_size``.

    A warm-up pass over the first few batches is not timed; then ``texts`` is run ``repeats``
    times and the median pass counts (one disturbed pass on a shared machine does not move it).
    It times the embedder alone, as the stream calls it: no cache, no heads.

    >>> from models.embedder import load_embedder
    >>> from schemas.settings import Settings
    >>> measure_throughput(load_embedder(Settings()), ["what is my balance"] * 64, 32)  # doctest: +SKIP
    """
    if batch_size < 1 or repeats < 1 or not texts:
        raise ValueError("measure_throughput needs texts, batch_size >= 1 and repeats >= 1")
    batches = [list(texts[i : i + batch_size]) for i in range(0, len(texts), batch_size)]
    for batch in batches[:3]:
        embedder.features_batch(batch)
    rates = []
    for _ in range(repeats):
        started = clock()
        for batch in batches:
            embedder.features_batch(batch)
        rates.append(len(texts) / max(clock() - started, 1e-9))
    return float(np.median(rates))
