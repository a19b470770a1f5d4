"""The named steps of the stream, as plain functions that need no Kafka.

``lookup`` finds texts in the embedding cache; ``embed_misses`` computes the features of the
misses (the embedder's readout: the sentence embedding and more pools of the same encoder
pass) in one batch through the shared embedder, each distinct text once; ``store`` puts them in
the cache; ``classify`` runs every requested head of a region on the shared features (and the
cleaned texts, for heads that use TF-IDF) and makes one prediction per (phrase, model). ``serve_batch`` does all of it for a batch of raw cleaned-phrase messages and says what
failed and why: it is what the serving agent (``streams.worker.Server``) runs.

The cache is an optimisation: when it fails, the batch is embedded without it.

What a cached phrase costs is mostly this module's per-phrase work, so it does each thing
once: the cleaned-phrase message is read without pydantic (our own worker wrote it), each
cache key is hashed once, and each prediction goes straight to its wire bytes
(``schemas.messages.prediction_bytes``), with a small :class:`Sent` record beside it for the
metrics and the rollups. A :class:`Prediction` model is built only when one is read from
:class:`Published` (tests, tools).
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple, Protocol, overload

import numpy as np

from schemas.messages import CleanedFormatError, CleanedPhrase, ErrorKind, Prediction, prediction_bytes, utcnow
from streams.routing import BatchExpert, Expert, ExpertOut
from streams.state.cache import EmbeddingCache
from streams.state.memos import AnswerMemo

log = logging.getLogger("phrasestream.worker")

Offload = Callable[..., Awaitable[Any]]
"""Run a blocking function elsewhere (a thread) and await it: ``offload(fn, *args)``."""



class Sent(NamedTuple):
    """What the worker reads of a prediction it published (the metrics, the rollups): a few of its fields."""

    id: str
    region: str
    model: str
    model_version: str
    clean_text: str
    received_at: datetime
    predicted_at: datetime
    ts: datetime | None


Observer = Callable[[Sequence[CleanedPhrase], np.ndarray, Sequence[Sent]], None]
"""Told of each batch's predictions, in the thread that computed them: ``observe(phrases, features,
predictions)``, ``features[i]`` being the features of ``phrases[i]`` (``streams.rollups.Rollups.observe``)."""


class Published(Sequence[Prediction]):
    """Predictions as published: each one's ``(key, value)`` bytes for ``predictions.out`` and its :class:`Sent`.

    As a sequence it gives :class:`Prediction` models, parsed from the bytes when read (tests,
    tools); the worker reads ``payloads`` and ``sent`` only.
    """

    def __init__(self) -> None:
        self.payloads: list[tuple[bytes, bytes]] = []
        self.sent: list[Sent] = []

    def add(self, sent: Sent, value: bytes) -> None:
        """Append one prediction: its record and its wire bytes (keyed by the phrase id)."""
        self.sent.append(sent)
        self.payloads.append((sent.id.encode(), value))

    def extend(self, other: Published) -> None:
        """Append every prediction of ``other``."""
        self.sent += other.sent
        self.payloads += other.payloads

    def __len__(self) -> int:
        return len(self.sent)

    @overload
    def __getitem__(self, index: int) -> Prediction: ...
    @overload
    def __getitem__(self, index: slice) -> list[Prediction]: ...

    def __getitem__(self, index: int | slice) -> Prediction | list[Prediction]:
        if isinstance(index, slice):
            return [Prediction.model_validate_json(value) for _, value in self.payloads[index]]
        return Prediction.model_validate_json(self.payloads[index][1])


class Embedder(Protocol):
    """What the stream needs of the embedder (``models.embedder.Embedder``)."""

    version: str
    precision: str

    @property
    def feature_dim(self) -> int: ...

    @property
    def features_id(self) -> str: ...

    def features_batch(self, texts: Sequence[str]) -> np.ndarray: ...


class Head(Protocol):
    """What the stream needs of a classifier head (``models.heads.Head``)."""

    @property
    def ref(self): ...  # HeadRef: region, model, version

    def predict(self, features: np.ndarray, top_k: int, texts: Sequence[str] | None = None): ...


@dataclass(frozen=True)
class Embedded:
    """Features for a batch of texts, with which of them came from the cache."""

    vectors: np.ndarray
    cache_hits: list[bool]


def lookup(texts: Sequence[str], cache: EmbeddingCache | None, dim: int) -> tuple[np.ndarray, list[bool], list[str]]:
    """Return a [n, dim] array with cached vectors filled in, the hit mask and the texts' cache keys (for ``store``)."""
    vectors = np.zeros((len(texts), dim), dtype=np.float32)
    if cache is None:
        return vectors, [False] * len(texts), []
    keys = [cache.key(text) for text in texts]
    found = [cache.read(key) for key in keys]
    hits = [raw is not None for raw in found]
    rows = [i for i, hit in enumerate(hits) if hit]
    if rows:  # one conversion for the whole batch, not one per phrase
        vectors[rows] = cache.decode(b"".join(raw for raw in found if raw is not None))
    return vectors, hits, keys


def embed_misses(texts: Sequence[str], vectors: np.ndarray, hits: Sequence[bool], embedder: Embedder) -> list[int]:
    """Compute the features of the texts that missed the cache (each distinct text once), in place; return their rows."""
    missing = [i for i, hit in enumerate(hits) if not hit]
    if not missing:
        return []
    distinct = list(dict.fromkeys(texts[i] for i in missing))
    computed = embedder.features_batch(distinct)
    by_text = dict(zip(distinct, computed))
    for i in missing:
        vectors[i] = by_text[texts[i]]
    return missing


def store(keys: Sequence[str], vectors: np.ndarray, rows: Sequence[int], cache: EmbeddingCache | None) -> None:
    """Put the freshly embedded rows into the cache, under the keys ``lookup`` gave (none: no cache)."""
    if cache is None or not keys:
        return
    for i in rows:
        cache.write(keys[i], vectors[i])


def _lookup_or_miss(texts: Sequence[str], cache: EmbeddingCache | None, dim: int) -> tuple[np.ndarray, list[bool], list[str]]:
    try:
        return lookup(texts, cache, dim)
    except Exception:  # the cache is an optimisation: embed everything instead
        log.warning("embedding cache lookup failed; embedding the whole batch", exc_info=True)
        return lookup(texts, None, dim)


def _store_or_skip(keys: Sequence[str], vectors: np.ndarray, rows: Sequence[int], cache: EmbeddingCache | None) -> None:
    try:
        store(keys, vectors, rows, cache)
    except Exception:  # serving goes on without caching this batch
        log.warning("embedding cache write failed", exc_info=True)


class HeadRun(NamedTuple):
    """One head's run on the rows of a batch that asked for it: one prediction per row."""

    region: str
    model: str
    rows: int
    seconds: float


def classify(
    phrases: Sequence[CleanedPhrase],
    embedded: Embedded,
    heads: Mapping[str, Mapping[str, Head]],
    embedder_version: str,
    top_k: int,
    memo: AnswerMemo | None = None,
    runs: list[HeadRun] | None = None,
    expert: BatchExpert | None = None,
) -> tuple[Published, list[tuple[CleanedPhrase, str]]]:
    """Run each phrase's heads on its vector; return predictions and (phrase, reason) failures.

    Each head runs once per batch, on the rows of the phrases that asked for it (through
    ``memo`` when given). A phrase whose head is no longer active is returned as a failure,
    not dropped. ``runs``, when given, gets a :class:`HeadRun` for each head run. ``expert``,
    when given, runs after each head: shadow, review routing, and the ``evidence`` of the rows
    that asked for it (``streams.routing``); with a margin rule a head is asked for two labels
    at least, and each prediction still carries ``top_k``.
    """
    rows_by_head: dict[tuple[str, str], list[int]] = defaultdict(list)
    failures: list[tuple[CleanedPhrase, str]] = []
    for i, phrase in enumerate(phrases):
        region_heads = heads.get(phrase.region, {})
        gone = [m for m in phrase.models if m not in region_heads]
        if gone:
            failures.append((phrase, f"head(s) {gone} of region {phrase.region!r} are no longer active"))
            continue
        for model in phrase.models:
            rows_by_head[(phrase.region, model)].append(i)
    predictions = Published()
    for (region, model), rows in rows_by_head.items():
        head = heads[region][model]
        texts = [phrases[r].clean_text for r in rows]
        k = max(top_k, 2) if expert is not None and expert.needs_two(region, model) else top_k
        start = time.perf_counter()
        if memo is None:
            answers = head.predict(embedded.vectors[rows], k, texts=texts)
        else:
            answers = memo.answer(head, embedded.vectors[rows], texts, k)
        seconds = time.perf_counter() - start
        if runs is not None:
            runs.append(HeadRun(region, model, len(rows), seconds))
        now = utcnow()
        version = head.ref.version
        evidence = None if expert is None else expert.after_head(
            head, region, model, rows, phrases, embedded.vectors, answers, seconds, top_k, embedded.cache_hits,
            embedder_version, now, memo)
        for j, (row, answer) in enumerate(zip(rows, answers)):
            phrase = phrases[row]
            value = prediction_bytes(
                phrase.id, region, model, version, answer.label, round(float(answer.probability), 6),
                [(label, round(float(p), 6)) for label, p in answer.top_k[:top_k]], phrase.clean_text,
                embedder_version, embedded.cache_hits[row],
                round((now - phrase.received_at).total_seconds() * 1000.0, 3), phrase.received_at, now, phrase.ts,
                None if evidence is None else evidence[j],
            )
            predictions.add(Sent(phrase.id, region, model, version, phrase.clean_text, phrase.received_at, now,
                                 phrase.ts), value)
    return predictions, failures


@dataclass(frozen=True)
class Failure:
    """A message of a batch that got no prediction, with the raw bytes to dead-letter."""

    raw: bytes
    kind: ErrorKind
    reason: str
    id: str | None = None


@dataclass
class Served:
    """What one batch gave: predictions, and failures for the dead-letter topic."""

    predictions: Published = field(default_factory=Published)
    failures: list[Failure] = field(default_factory=list)
    embed_seconds: list[float] = field(default_factory=list)
    """The time of each embedder call (none when every text was cached), for the metrics."""
    head_runs: list[HeadRun] = field(default_factory=list)
    """Each head run (its rows and time), for the metrics."""
    extra: ExpertOut = field(default_factory=ExpertOut)
    """Review items and shadow predictions (``streams.routing``), with their counts."""

    @property
    def payloads(self) -> list[tuple[bytes, bytes]]:
        """(key, value) of each prediction, serialised for ``predictions.out``."""
        return self.predictions.payloads

    def add(self, other: Served) -> None:
        """Append what ``other`` gave."""
        self.predictions.extend(other.predictions)
        self.failures += other.failures
        self.embed_seconds += other.embed_seconds
        self.head_runs += other.head_runs
        self.extra.add(other.extra)


def _compute(phrases: Sequence[CleanedPhrase], vectors: np.ndarray, hits: list[bool], embedder: Embedder,
             heads: Mapping[str, Mapping[str, Head]], top_k: int, memo: AnswerMemo | None,
             observe: Observer | None = None, cache: EmbeddingCache | None = None,
             expert: Expert | None = None) -> tuple[list[int], Served]:
    """Embed the misses and run the heads: the blocking part of a batch, for a worker thread.

    With a ``cache``, the misses' vectors are rounded as its entries hold them
    (:meth:`EmbeddingCache.rounded`) before the heads see them: cached or not, a phrase is
    served the same features.

    ``observe`` is told of the predictions last, once nothing else can fail; its own failure
    is logged and costs no prediction (nor a second count when the batch is retried phrase by
    phrase).
    """
    texts = [p.clean_text for p in phrases]
    start = time.perf_counter()
    rows = embed_misses(texts, vectors, hits, embedder)
    if rows and cache is not None:
        vectors[rows] = cache.rounded(vectors[rows])
    embed_seconds = [time.perf_counter() - start] if rows else []
    runs: list[HeadRun] = []
    batch = None if expert is None else expert.batch()
    predictions, gone = classify(phrases, Embedded(vectors, hits), heads, embedder.version, top_k, memo, runs, batch)
    served = Served(predictions=predictions,
                    failures=[Failure(p.to_bytes(), ErrorKind.UNKNOWN_MODEL, reason, p.id) for p, reason in gone],
                    embed_seconds=embed_seconds, head_runs=runs)
    if batch is not None:
        served.extra = batch.out
    if observe is not None:
        try:
            observe(phrases, vectors, predictions.sent)
        except Exception:  # an observation, not serving: the predictions go out anyway
            log.warning("observing a batch of %d failed; its predictions are served", len(phrases), exc_info=True)
    return rows, served


async def serve_batch(
    values: Sequence[bytes],
    embedder: Embedder,
    cache: EmbeddingCache | None,
    heads: Mapping[str, Mapping[str, Head]],
    top_k: int,
    offload: Offload | None = None,
    memo: AnswerMemo | None = None,
    observe: Observer | None = None,
    expert: Expert | None = None,
) -> Served:
    """Embed and classify a batch of cleaned-phrase messages; never raise for a bad one.

    The cache is read and written in the caller's thread (a Faust table belongs to the
    event loop); embedding the misses, the heads and the serialisation of the predictions run
    through ``offload`` when given, so the event loop keeps consuming meanwhile.

    A message that does not parse is a failure on its own. When the batch fails as a
    whole, each phrase is tried alone, so one bad phrase cannot take its batch with it.
    ``observe`` (see :data:`Observer`) is told of every prediction once; ``expert`` (see
    ``streams.routing.Expert``) adds review items and shadow predictions to what it gives.
    """
    served = Served()
    phrases: list[CleanedPhrase] = []
    for raw in values:
        try:
            phrases.append(CleanedPhrase.from_bytes(raw))
        except CleanedFormatError as exc:
            served.failures.append(Failure(raw, ErrorKind.WRONG_TYPE, f"not a cleaned phrase: {exc}"))
    if not phrases:
        return served
    try:
        texts = [p.clean_text for p in phrases]
        vectors, hits, keys = _lookup_or_miss(texts, cache, embedder.feature_dim)
        if offload is None:
            rows, done = _compute(phrases, vectors, hits, embedder, heads, top_k, memo, observe, cache, expert)
        else:
            rows, done = await offload(_compute, phrases, vectors, hits, embedder, heads, top_k, memo, observe, cache,
                                       expert)
        _store_or_skip(keys, vectors, rows, cache)
    except Exception as exc:  # a bug or a bad phrase: isolate it, keep the rest
        if len(phrases) == 1:
            log.exception("embedding or classification failed for phrase %s", phrases[0].id)
            served.failures.append(Failure(phrases[0].to_bytes(), ErrorKind.INTERNAL, f"internal error: {exc!r}", phrases[0].id))
            return served
        log.warning("a batch of %d failed (%r); trying its phrases one by one", len(phrases), exc)
        for phrase in phrases:
            served.add(await serve_batch([phrase.to_bytes()], embedder, cache, heads, top_k, offload, memo, observe,
                                         expert))
        return served
    served.add(done)
    return served
