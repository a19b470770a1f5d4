"""Serving rollups: what a drift report needs from serving time, summed per hour, never per row.

The inferences table holds labels, confidences and texts, but no embedding and no word
pieces. For those, the worker keeps running sums per (region, model, model_version, UTC
hour of ``predicted_at``): for every prediction it makes, cached or not, :class:`Rollups`
adds one phrase, its L2-normalised sentence embedding (the ``mean6`` block of the features
the head got, as ``retrain/drift/reference.py`` normalises it), its unknown-word-piece rate and
whether it had any unknown piece. ``n`` counts predictions made (one per phrase and head),
so it matches the rows of a head in ``inferences``, duplicates by a client's repeated
``id`` aside.

Every ``PHRASESTREAM_ROLLUP_INTERVAL_SECONDS`` and at shutdown, :class:`RollupPublisher`
drains the sums into :class:`~schemas.observations.ServingRollup` deltas, each with a unique
``delta_id`` (worker instance uuid and a sequence number), and produces them to
``serving.rollups``. The sink stores each delta once in ``serving_rollups``
(:class:`streams.sinks.rollups.PostgresRollupSink`, ``ON CONFLICT (delta_id) DO NOTHING``), so a delta delivered
twice counts once. A drift report sums the rows of a window: centroid = Σ embedding_sum / Σ n.

Why the publisher has its own producer, not the serving agent's ``Outbox``: the agent waits
after every batch until the broker has every message of its outbox, and never gives one up.
A delta that cannot be delivered (the topic is missing, say) would stop predictions there.
Here a delta that fails is kept and produced again at the next tick with the same
``delta_id``; meanwhile no new delta is cut, the sums keep growing in memory instead, so
what waits is bounded by the number of (head, hour) keys, not by the length of the outage.

What a crash costs: the sums since the last delivered delta (at most one interval, or the
outage). Phrases served again after a crash (at-least-once) are counted again. Both are
small against an hour of traffic and do not move a centroid or a rate.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
from pydantic import ValidationError

from ops.kafka.clients import client_config
from schemas.messages import CleanedPhrase
from schemas.observations import ServingRollup
from schemas.settings import Settings
from streams.pipeline import Sent
from streams.state.memos import UnknownRates

log = logging.getLogger("phrasestream.rollups")

EMBEDDING_BLOCK = "mean6"
"""The readout block that is the sentence embedding (``models.embedder.READOUT``)."""

BucketKey = tuple[str, str, str, datetime]
"""(region, model, model_version, UTC hour)."""


def hour_of(t: datetime) -> datetime:
    """Return the UTC hour that ``t`` (timezone-aware) falls in, as PostgreSQL's ``date_trunc('hour', t)`` in UTC."""
    if t.tzinfo is None:
        raise ValueError(f"a naive datetime has no hour in UTC: {t!r}")
    return t.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """Return the rows of ``vectors`` L2-normalised, in float64; a zero row stays zero (as in ``reference_stats``)."""
    v = np.asarray(vectors, dtype=np.float64)
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    return np.divide(v, norms, out=np.zeros_like(v), where=norms > 0)


@dataclass
class Bucket:
    """The running sums of one (region, model, model_version, hour)."""

    embedding_sum: np.ndarray
    n: int = 0
    unk_rate_sum: float = 0.0
    with_unk: int = 0


class Rollups:
    """Sum what the worker serves per (region, model, model_version, UTC hour); cut deltas from the sums.

    ``columns`` are the feature columns of the sentence embedding (``block_columns(readout,
    ["mean6"])``); ``unknown_rates`` computes the rate of texts (``Embedder.unknown_rates``).
    :meth:`observe` runs in the thread that computes a batch; :meth:`drain` in the
    publisher's: a lock keeps the two apart (each holds it for microseconds).

    Example (the worker builds it with :func:`rollups_for`)::

        rollups = Rollups(block_columns(embedder.readout, ["mean6"]), embedder.unknown_rates)
        rollups.observe(phrases, features, predictions)  # for every batch served
        deltas = rollups.drain()  # [ServingRollup, ...], one per (region, model, version, hour)
    """

    def __init__(self, columns: np.ndarray, unknown_rates: Callable[[Sequence[str]], np.ndarray],
                 memo_entries: int = 100_000, instance: str | None = None) -> None:
        cols = np.asarray(columns)
        self._width = len(cols)
        contiguous = self._width > 0 and np.array_equal(cols, np.arange(cols[0], cols[0] + self._width))
        # a block is a run of columns: a slice reads it without copying the whole batch through fancy indexing
        self._columns: slice | np.ndarray = slice(int(cols[0]), int(cols[0]) + self._width) if contiguous else cols
        self._unknown = UnknownRates(unknown_rates, memo_entries)
        self.instance = instance or uuid.uuid4().hex
        self._buckets: dict[BucketKey, Bucket] = {}
        self._lock = threading.Lock()  # the sums: observe (compute thread) against drain (publisher)
        self._memo_lock = threading.Lock()  # the memo, held while a tokenizer call runs, not the sums
        self._seq = 0

    @property
    def unknown(self) -> UnknownRates:
        return self._unknown

    @property
    def pending(self) -> int:
        """Return how many predictions the sums hold that no delta carries yet."""
        with self._lock:
            return sum(b.n for b in self._buckets.values())

    def observe(self, phrases: Sequence[CleanedPhrase], vectors: np.ndarray, predictions: Sequence[Sent]) -> None:
        """Add the predictions of one batch; ``vectors[i]`` are the features of ``phrases[i]``.

        A prediction is matched to its phrase by ``clean_text``: features and rate depend on
        the cleaned text alone (a cache hit equals a fresh embedding), so any row with that
        text gives the same numbers.
        """
        if not predictions:
            return
        texts = [p.clean_text for p in phrases]
        row_of = {t: i for i, t in enumerate(texts)}
        rows_by_key: dict[BucketKey, list[int]] = {}
        rows: list[int] = []
        last: tuple = ()
        for p in predictions:
            # classify gives a head's predictions in a run, sharing its strings and one timestamp:
            # the key is made (and the hour truncated) once per run, not per prediction
            if not (last and p.predicted_at is last[0] and p.model is last[1] and p.region is last[2]
                    and p.model_version is last[3]):
                last = (p.predicted_at, p.model, p.region, p.model_version)
                rows = rows_by_key.setdefault((p.region, p.model, p.model_version, hour_of(p.predicted_at)), [])
            rows.append(row_of[p.clean_text])
        unit = unit_rows(np.asarray(vectors)[:, self._columns])  # float64, as reference_stats normalises
        with self._memo_lock:
            rates = self._unknown.rates(texts)
        with self._lock:
            for key, rows in rows_by_key.items():
                bucket = self._buckets.get(key)
                if bucket is None:
                    bucket = self._buckets[key] = Bucket(np.zeros(self._width, dtype=np.float64))
                bucket.n += len(rows)
                bucket.embedding_sum += unit[rows].sum(axis=0)
                r = rates[rows]
                bucket.unk_rate_sum += float(r.sum())
                bucket.with_unk += int(np.count_nonzero(r > 0))

    def drain(self) -> list[ServingRollup]:
        """Return the sums as deltas with fresh ``delta_id``s, and start new sums."""
        with self._lock:
            buckets, self._buckets = self._buckets, {}
            deltas = []
            for (region, model, version, hour), b in sorted(buckets.items()):
                self._seq += 1
                try:
                    deltas.append(ServingRollup(
                        delta_id=f"{self.instance}-{self._seq}", region=region, model=model, model_version=version,
                        hour=hour, n=b.n, embedding_sum=b.embedding_sum.tolist(), unk_rate_sum=b.unk_rate_sum,
                        with_unk=b.with_unk,
                    ))
                except ValidationError as exc:  # a NaN from the embedder, say: lose this bucket, not the others
                    log.error("serving rollups: dropped the sums of %s/%s %s at %s (%d predictions): %s",
                              region, model, version, hour.isoformat(), b.n, exc.errors()[0]["msg"])
        return deltas


def rollups_for(embedder: Any, memo_entries: int) -> Rollups:
    """Return the :class:`Rollups` of a worker serving with ``embedder`` (``models.embedder.Embedder``)."""
    from models.heads import block_columns

    return Rollups(block_columns(embedder.readout, [EMBEDDING_BLOCK]), embedder.unknown_rates, memo_entries)


@dataclass
class PublishState:
    """The deltas of the publisher, by ``delta_id``: produced and unconfirmed, or to produce."""

    waiting: dict[str, ServingRollup] = field(default_factory=dict)
    to_send: dict[str, ServingRollup] = field(default_factory=dict)
    failing_since: int = 0
    """Failed deliveries since the last success (logged once, when it starts)."""


class RollupPublisher:
    """Produce the deltas of :class:`Rollups` to ``serving.rollups``; never block or fail predictions.

    Call :meth:`publish` from a thread, on a timer (the worker: every
    ``PHRASESTREAM_ROLLUP_INTERVAL_SECONDS``), and :meth:`close` at shutdown. A new set of
    deltas is cut only when every delta of the previous set is delivered; a delta that failed
    is produced again, unchanged, at the next call (the sink stores it once). Errors are
    logged, never raised.
    """

    def __init__(self, settings: Settings, rollups: Rollups, producer: Any | None = None) -> None:
        self._topic = settings.topic_rollups
        self._rollups = rollups
        self._state = PublishState()
        self._lock = threading.Lock()
        if producer is None:
            from confluent_kafka import Producer

            producer = Producer(client_config(settings, {
                "client.id": f"{settings.app_id}-rollups",
                "acks": "all",
                "linger.ms": 5,
                # give a message up after a minute: it is kept here and produced again (same delta_id)
                "message.timeout.ms": 60_000,
            }))
        self._producer = producer
        self.delivered = 0

    @property
    def outstanding(self) -> int:
        """Return how many deltas wait for delivery."""
        return len(self._state.waiting) + len(self._state.to_send)

    def _on_delivery(self, err: Any, msg: Any) -> None:
        delta_id = (msg.key() or b"").decode()
        delta = self._state.waiting.pop(delta_id, None)
        if delta is None:
            return
        if err is None:
            self.delivered += 1
            if self._state.failing_since:
                log.info("serving rollups: delivered again after %d failure(s)", self._state.failing_since)
                self._state.failing_since = 0
            return
        if not self._state.failing_since:
            log.warning("serving rollups: delta %s not delivered to %s (%s); kept for the next try, "
                        "predictions go on", delta_id, self._topic, err)
        self._state.failing_since += 1
        self._state.to_send[delta_id] = delta

    def publish(self, timeout: float = 5.0) -> int:
        """Produce the outstanding deltas (or cut new ones), wait up to ``timeout`` s; return how many are left."""
        with self._lock:
            try:
                if not self.outstanding:
                    self._state.to_send = {d.delta_id: d for d in self._rollups.drain()}
                for delta_id, delta in list(self._state.to_send.items()):
                    self._producer.produce(self._topic, value=delta.to_bytes(), key=delta_id.encode(),
                                           on_delivery=self._on_delivery)
                    self._state.waiting[delta_id] = self._state.to_send.pop(delta_id)
                self._producer.flush(timeout)
            except Exception:  # BufferError, KafkaException: keep the deltas, try again next time
                log.warning("serving rollups: publishing failed; the deltas are kept for the next try",
                            exc_info=True)
            return self.outstanding

    def close(self, timeout: float = 10.0) -> int:
        """Publish everything at shutdown, trying for up to ``timeout`` s; return how many predictions went uncounted.

        The set in flight goes first, then the last sums are cut and sent (deltas are cut
        only when the previous set is delivered, see the class docstring).
        """
        deadline = time.monotonic() + timeout
        while True:
            left = self.publish(max(0.0, deadline - time.monotonic()))
            if not left and not self._rollups.pending:
                return 0
            if time.monotonic() >= deadline:
                break
            if left:
                time.sleep(0.2)  # a delivery failed at once (no broker): do not spin
        with self._lock:
            uncounted = sum(d.n for d in (*self._state.waiting.values(), *self._state.to_send.values()))
        uncounted += self._rollups.pending
        log.warning("serving rollups: %d delta(s) not delivered at shutdown; drift reports miss %d prediction(s)",
                    left, uncounted)
        return uncounted
