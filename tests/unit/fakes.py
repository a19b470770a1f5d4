"""Stand-ins shared by the tests: an embedder without TensorFlow, Kafka's messages, consumer and
producer, and a prediction as a worker publishes it.

pytest puts this folder on ``sys.path`` for the unit tests; ``tests/integration/conftest.py``
adds it for the integration tests that drive a runner with fake Kafka clients.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
from confluent_kafka import Message

from models.embedder import READOUT, quantise
from models.heads import BLOCK_DIM, HeadPrediction, HeadRef
from schemas.messages import DeadLetter, Prediction


class ReadoutEmbedder:
    """Stand in for ``models.embedder.Embedder``'s training and serving side, without TensorFlow.

    Each word has a fixed random vector per readout block; a text's block is the normalised mean
    of its words' (so phrases that share words share features). Texts with ``zzz`` have half
    of their word pieces unknown. Every call of ``features_batch`` is recorded in ``calls``.
    """

    readout = READOUT
    precision = "fp32"

    def __init__(self, version: str = "fake-v1") -> None:
        self.version = version
        self.calls: list[list[str]] = []

    @property
    def features_id(self) -> str:
        return self.version

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


@dataclass
class FakeHead:
    """Stand in for a loaded head: label each vector by the index of its largest component, prefixed
    by the model (``intent:3``); keep the vectors and texts of every call in ``calls`` and ``texts``."""

    ref: HeadRef
    calls: list[np.ndarray] = field(default_factory=list)
    texts: list[list[str] | None] = field(default_factory=list)

    def predict(self, vectors: np.ndarray, top_k: int, texts: Sequence[str] | None = None) -> list[HeadPrediction]:
        self.calls.append(np.array(vectors))
        self.texts.append(None if texts is None else list(texts))
        answers = []
        for v in vectors:
            label = f"{self.ref.model}:{int(np.argmax(v))}"
            pairs = [(label, 0.9000004), (f"{self.ref.model}:other", 0.1)][:top_k]
            answers.append(HeadPrediction(label, 0.9000004, pairs))
        return answers


class FakeProducer:
    """Stand in for confluent-kafka's ``Producer`` as an outbox uses it: a bounded local queue
    (``BufferError`` when full) and delivery reports served by ``poll`` and ``flush``.

    ``fail_once``: values whose first delivery fails; ``fail_first``: how many deliveries fail
    first, whatever their value; ``away_flushes``: flushes that deliver nothing (a broker that
    is away). ``produced`` holds (topic, key, value) of every message taken, ``delivered`` of
    every one delivered, in order; a delivery report goes to ``on_delivery`` either way, as
    librdkafka's does. ``journal``, when given, gets ``"flush"`` at every flush (to order it
    against other calls).
    """

    def __init__(self, queue_max: int = 100, fail_once: Iterable[bytes] = (), away_flushes: int = 0,
                 journal: list[str] | None = None, fail_first: int = 0) -> None:
        self.queue: list[tuple[Message, Callable[[Any, Any], None] | None]] = []
        self.queue_max, self.fail_once, self.away_flushes = queue_max, set(fail_once), away_flushes
        self.fail_first = fail_first
        self.produced: list[tuple[str, bytes | None, bytes]] = []
        self.delivered: list[tuple[str, bytes | None, bytes]] = []
        self.full = 0
        self.journal = journal

    def produce(self, topic: str, value: bytes, key: bytes | None = None, on_delivery: Any = None) -> None:
        if len(self.queue) >= self.queue_max:
            self.full += 1
            raise BufferError("Local: Queue full")
        self.queue.append((Message(topic=topic, key=key, value=value), on_delivery))
        self.produced.append((topic, key, value))

    def poll(self, timeout: float) -> int:
        return 0 if self.away_flushes else self._deliver(1)

    def __len__(self) -> int:
        return len(self.queue)

    def flush(self, timeout: float) -> int:
        if self.journal is not None:
            self.journal.append("flush")
        if self.away_flushes:
            self.away_flushes -= 1
            return len(self.queue)
        self._deliver(len(self.queue))
        return len(self.queue)

    def _deliver(self, count: int) -> int:
        done, self.queue = self.queue[:count], self.queue[count:]
        for msg, report in done:
            error = None
            if self.fail_first:
                self.fail_first -= 1
                error = "Broker: Not enough in-sync replicas"
            elif msg.value() in self.fail_once:
                self.fail_once.discard(msg.value())
                error = "Broker: Not enough in-sync replicas"
            else:
                self.delivered.append((msg.topic(), msg.key(), msg.value()))
            if report is not None:
                report(error, msg)
        return len(done)

def kafka_message(value: bytes, offset: int = 0, partition: int = 0, *, topic: str = "predictions.out",
                  key: bytes | None = None) -> Message:
    """Return a real confluent-kafka ``Message`` as a consumer hands one out: a position, a value, no error."""
    return Message(topic=topic, partition=partition, offset=offset, key=key, value=value)


class FakeConsumer:
    """A consumer that hands out ``batches`` one per ``consume`` (then empty ones); records commits and seeks.

    ``commits`` counts the commits, ``offsets`` holds the (partition, offset) pairs of each, and
    ``seeks`` the (partition, offset) of each seek. A commit must name its offsets and be
    synchronous (the sink commits a batch's own offsets once it is stored).
    """

    def __init__(self, batches: list[list[Message]]) -> None:
        self.batches, self.commits = batches, 0
        self.offsets: list[list[tuple[int, int]]] = []
        self.seeks: list[tuple[int, int]] = []

    def consume(self, num_messages: int, timeout: float) -> list[Message]:
        return self.batches.pop(0) if self.batches else []

    def commit(self, offsets=None, asynchronous: bool = True):  # type: ignore[no-untyped-def]
        assert offsets is not None and asynchronous is False, "commit the batch's own offsets, synchronously"
        self.commits += 1
        self.offsets.append([(tp.partition, tp.offset) for tp in offsets])
        return offsets

    def seek(self, tp) -> None:  # type: ignore[no-untyped-def]
        self.seeks.append((tp.partition, tp.offset))

    def assignment(self) -> list[tuple[str, int]]:
        """The partitions it holds: always one (the sink's group watch leaves a consumer with partitions alone)."""
        return [("fake", 0)]


class FakeLetterBox:
    """A dead-letter producer: keeps every value produced (``sent``); ``flush`` leaves ``undelivered`` behind."""

    def __init__(self, undelivered: int = 0) -> None:
        self.sent: list[bytes] = []
        self.undelivered = undelivered

    def produce(self, topic: str, key: bytes | None = None, value: bytes = b"") -> None:
        self.sent.append(value)

    def flush(self, timeout: float) -> int:
        return self.undelivered

    @property
    def letters(self) -> list[DeadLetter]:
        """Return the values produced, parsed as dead letters."""
        return [DeadLetter.model_validate_json(value) for value in self.sent]


def prediction(pid: str, label: str = "balance", at: datetime | None = None) -> bytes:
    """A global/intent prediction (version ``v1``) as a worker publishes it, made ``at`` (now by default)."""
    at = at or datetime.now(UTC)
    return Prediction(
        id=pid, region="global", model="intent", model_version="v1", label=label, probability=0.9,
        top_k=[(label, 0.9)], clean_text="x", embedder_version="e1", cache_hit=False, latency_ms=1.0,
        received_at=at, predicted_at=at,
    ).to_bytes()
