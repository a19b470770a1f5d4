"""How fast the embedder runs: :func:`measure_throughput` (``make bench``, the tests) and
:func:`time_batches` (``embed_precision=auto``'s start-up check)."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
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


CHECK_TEXTS: tuple[str, ...] = (
    "what is my checking account balance", "book a table for four at the italian place tonight",
    "how do i say thank you in french", "set an alarm for 6 am", "is my flight to denver on time",
    "please transfer 200 dollars from savings to checking", "what's the weather like in paris this weekend",
    "add milk and eggs to my shopping list", "my card was declined at the store, why",
    "how many calories are in a banana", "play some jazz", "remind me to call mom at five",
    "what is the exchange rate between euros and dollars", "can you tell me a joke",
    "i need to change the oil in my car, when is it due", "how long should i cook a ten pound turkey",
    "cancel my reservation", "what's my credit score", "find me a recipe for vegetarian lasagna",
    "how much do i owe on my visa card this month", "turn the lights off in the kitchen",
    "who are you", "what time is it in tokyo", "i lost my luggage on the way from rome, what do i do",
    "roll a die", "what is the interest rate on my savings account", "tell me about the meaning of life",
    "spell necessary", "schedule a meeting with the marketing team for tuesday at ten",
    "how do i report fraud on my account", "what are the ingredients in a margarita", "goodbye",
)
"""32 phrases like the stream's (CLINC150-like, 3-15 words): one batch of the start-up check."""


def time_batches(sources: Mapping[str, FeatureSource], texts: Sequence[str] = CHECK_TEXTS, rounds: int = 3,
                 clock: Callable[[], float] = time.perf_counter) -> dict[str, float]:
    """Return the median seconds of one ``features_batch(texts)`` call of each source.

    Each source is called once untimed (its first call builds its graph), then ``rounds``
    times, the sources taking turns within a round, so that a burst of other work on the
    machine falls on all of them. With 3 rounds of 32 phrases it takes 1-3 s on 2 cores.
    """
    if rounds < 1 or not sources:
        raise ValueError("time_batches needs sources and rounds >= 1")
    batch = list(texts)
    for source in sources.values():
        source.features_batch(batch)
    seconds: dict[str, list[float]] = {name: [] for name in sources}
    for _ in range(rounds):
        for name, source in sources.items():
            started = clock()
            source.features_batch(batch)
            seconds[name].append(clock() - started)
    return {name: float(np.median(times)) for name, times in seconds.items()}
