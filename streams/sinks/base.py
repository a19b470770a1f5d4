"""Consume a topic of records and store them through a :class:`Sink`: written once for every sink.

:class:`SinkRunner` is the part of ``phrasestream sink`` that every table shares: it reads a
batch (``consume(num_messages=PHRASESTREAM_SINK_BATCH_MAX)``), parses each record
(a record that does not parse goes to ``phrases.dlq`` with its reason), hands the batch to a
:class:`Sink`, and

- retries a failing write with exponential backoff (tenacity) for
  ``PHRASESTREAM_SINK_RETRY_SECONDS``; past that it rewinds to the batch's first offsets and
  reads it again, so nothing is lost and the consumer stays in its group;
- dead-letters a record the sink refuses (one of :data:`ROW_ERRORS`) and stores the rest of its
  batch: the batch is split in halves until the refused records stand alone;
- commits the batch's offsets only after its rows are stored and its dead letters delivered;
- writes one batch (in a thread) while it reads and prepares the next (:meth:`SinkRunner.serve`).

A sink implements three methods (:class:`Sink`); ``streams.sinks.postgres.PostgresSink`` stores
predictions, ``streams.sinks.rollups.PostgresRollupSink`` the serving rollups, and
``streams.sinks.run`` wires both into the sink process. docs/sink.md says why it is built this way.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

import psycopg2
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from pydantic import ValidationError
from tenacity import (
    RetryCallState,
    RetryError,
    Retrying,
    retry_if_exception_type,
    retry_if_not_exception_type,
    stop_after_delay,
    stop_when_event_set,
    wait_exponential,
)

from ops.kafka.clients import client_config
from schemas.messages import DeadLetter, ErrorKind, Prediction
from schemas.settings import Settings
from streams.sinks.membership import GroupWatch, group_state

log = logging.getLogger("phrasestream.sink")

ROW_ERRORS = (psycopg2.DataError, psycopg2.IntegrityError, ValueError)
"""Errors that a row causes (bad value, constraint): retrying cannot help; the row is dead-lettered.

``ValueError`` covers text that cannot be encoded as UTF-8 (a lone surrogate), raised before
anything is sent. Any other ``psycopg2.Error`` is taken for an outage and retried.
"""


class Sink(Protocol):
    """Store a batch of records; return how many rows were new.

    :meth:`write` raises one of :data:`ROW_ERRORS` for a record the store refuses (the runner
    dead-letters it) and any other ``psycopg2.Error`` for an outage (the runner retries).
    """

    def prepare(self, batch: Sequence[Prediction]) -> Sequence[Prediction]:
        """Return the batch ready for :meth:`write` (encoded, say); called while the previous batch is written."""
        ...

    def write(self, batch: Sequence[Prediction]) -> int: ...

    def close(self) -> None: ...


@dataclass
class SinkStats:
    """What the sink has done so far."""

    batches: int = 0
    stored: int = 0
    duplicates: int = 0
    invalid: int = 0
    refused: int = 0
    retries: int = 0
    rewinds: int = 0


@dataclass
class Received:
    """A batch as read: its messages, the predictions parsed from them, and letters for the rest."""

    messages: list[Message]
    batch: list[tuple[Message, Prediction]]
    letters: list[DeadLetter]
    prepared: Sequence[Prediction]
    """The predictions of ``batch`` as the sink prepared them for writing."""


def consumer_config(settings: Settings, group: str | None = None) -> dict:
    """Return the confluent-kafka consumer settings of the sink's group (or of ``group``)."""
    return client_config(settings, {
        "group.id": group or settings.sink_group,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "enable.partition.eof": False,
        "session.timeout.ms": 30_000,
        "max.poll.interval.ms": 600_000,
    })


def position(m: Message) -> tuple[str, int, int]:
    """Return a consumed message's topic, partition and offset.

    confluent-kafka types the three optional (a message being produced has no offset yet); a
    message that ``consume()`` returned without an error always has them.
    """
    topic, partition, offset = m.topic(), m.partition(), m.offset()
    assert topic is not None and partition is not None and offset is not None
    return topic, partition, offset


def next_offsets(messages: Sequence[Message]) -> list[TopicPartition]:
    """Return the offsets to commit once ``messages`` are handled: last offset + 1 per partition."""
    last: dict[tuple[str, int], int] = {}
    for m in messages:
        topic, partition, offset = position(m)
        key = (topic, partition)
        last[key] = max(last.get(key, -1), offset)
    return [TopicPartition(topic, partition, offset + 1) for (topic, partition), offset in sorted(last.items())]


REJOIN_AFTER_S = 60.0
"""How long a consumer may hold no partition before the runner asks whether it is still in its group
(twice the sink's 30 s session: a rebalance or a broker restart is over by then)."""


class SinkRunner:
    """Consume ``predictions.out`` and write to a :class:`Sink` until :meth:`stop`.

    ``topic``, ``group``, ``parse`` and ``what`` make it consume another topic of records
    (the serving rollups: ``ServingRollup.model_validate_json``, "serving rollup"); a
    record's ``id`` names it in dead letters.
    """

    def __init__(
        self, settings: Settings, sink: Sink, consumer: Consumer | None = None, producer: Producer | None = None,
        *, topic: str | None = None, group: str | None = None, parse: Callable[[bytes], Any] | None = None,
        what: str = "prediction",
    ) -> None:
        self.settings = settings
        self.sink = sink
        self.topic = topic or settings.topic_out
        self.group = group or settings.sink_group
        self._parse_value = parse or Prediction.model_validate_json
        self.what = what
        self.consumer = consumer or Consumer(consumer_config(settings, self.group))
        self.watch = GroupWatch(self.group, lambda g: group_state(client_config(settings), g), REJOIN_AFTER_S)
        """Replaces a consumer that has fallen out of its group for good (``streams.sinks.membership``)."""
        self._producer = producer or Producer(client_config(settings))
        self._running = True
        self._stopping = threading.Event()
        """Set by :meth:`stop`: a write being retried gives up at once (its batch is re-read later)."""
        self.stats = SinkStats()
        self.committed: dict[tuple[str, int], int] = {}
        """The offsets this runner has committed, by (topic, partition)."""
        self.first_message_at: float | None = None
        """``time.monotonic()`` when the first message arrived (for benchmarks)."""
        self._pending: tuple[Received, Future[tuple[int, list[DeadLetter]]]] | None = None

    def stop(self, *_: object) -> None:
        self._running = False
        self._stopping.set()

    def _pause(self, seconds: float) -> None:
        """Sleep between retries; :meth:`stop` cuts the sleep short."""
        self._stopping.wait(seconds)

    def _parse(self, messages: Sequence[Message]) -> tuple[list[tuple[Message, Prediction]], list[DeadLetter]]:
        batch: list[tuple[Message, Prediction]] = []
        letters: list[DeadLetter] = []
        for m in messages:
            try:
                batch.append((m, self._parse_value(m.value() or b"")))
            except ValidationError as exc:
                self.stats.invalid += 1
                letters.append(DeadLetter.of(ErrorKind.WRONG_TYPE, f"not a valid {self.what}: {exc.errors()[0]['msg']}",
                                             m.value(), *position(m)))
        return batch, letters

    def _write_with_retry(self, batch: Sequence[Prediction]) -> int:
        def on_retry(state: RetryCallState) -> None:
            self.stats.retries += 1
            failure = state.outcome.exception() if state.outcome is not None else None
            log.warning("database write failed (%s); retry %d", failure, state.attempt_number)

        retrying = Retrying(
            retry=retry_if_exception_type(psycopg2.Error) & retry_if_not_exception_type(ROW_ERRORS),
            wait=wait_exponential(multiplier=0.2, max=5.0),
            # A stop during a database outage must not wait out the retries: the batch is not
            # committed, so it is read again at the next start (and stored once).
            stop=stop_after_delay(self.settings.sink_retry_seconds) | stop_when_event_set(self._stopping),
            sleep=self._pause,
            before_sleep=on_retry,
            reraise=False,
        )
        return retrying(self.sink.write, batch)

    def _store(self, batch: Sequence[tuple[Message, Prediction]],
               prepared: Sequence[Prediction] | None = None) -> tuple[int, list[DeadLetter]]:
        """Write the batch (``prepared``: as the sink prepared it); return the new rows and a dead
        letter for each row the database refused.

        A refused batch is rolled back whole, then written again in halves, recursively: the rows
        beside a refused one are stored in about 2·log2(batch) writes instead of one write per row.
        """
        if not batch:
            return 0, []
        try:
            return self._write_with_retry(prepared if prepared is not None else [p for _, p in batch]), []
        except ROW_ERRORS as exc:
            if len(batch) == 1:
                m, prediction = batch[0]
                return 0, [DeadLetter.of(ErrorKind.REJECTED_BY_DATABASE, f"the database refused this {self.what}: {exc}",
                                         m.value(), *position(m), prediction.id)]
            log.warning("the database refused a row of a batch of %d (%s); writing it in halves", len(batch), exc)
        half = len(batch) // 2
        new_a, refused_a = self._store(batch[:half])
        new_b, refused_b = self._store(batch[half:])
        return new_a + new_b, refused_a + refused_b

    def _dead_letter(self, letters: Sequence[DeadLetter]) -> None:
        """Deliver the letters to the DLQ or raise: offsets are committed only after this."""
        for letter in letters:
            self._producer.produce(self.settings.topic_dlq, key=(letter.id or "").encode() or None,
                                   value=letter.to_bytes())
        if letters and self._producer.flush(30) > 0:
            raise KafkaException(f"{len(letters)} dead letter(s) not delivered to {self.settings.topic_dlq}")

    def _rewind(self, messages: Sequence[Message]) -> None:
        first: dict[tuple[str, int], int] = {}
        for m in messages:
            topic, partition, offset = position(m)
            key = (topic, partition)
            first[key] = min(first.get(key, offset), offset)
        for (topic, partition), offset in first.items():
            try:
                self.consumer.seek(TopicPartition(topic, partition, offset))
            except KafkaException as exc:  # no longer ours (a rebalance): its next owner reads from the commit
                log.warning("cannot rewind %s[%d] to %d: %s", topic, partition, offset, exc)
        self.stats.rewinds += 1

    def _commit(self, messages: Sequence[Message]) -> None:
        """Commit the offsets after ``messages`` (never further: the position may be ahead)."""
        offsets = next_offsets(messages)
        try:
            result = self.consumer.commit(offsets=offsets, asynchronous=False) or offsets
        except KafkaException as exc:  # e.g. a rebalance: the next owner re-reads, the rows are idempotent
            log.warning("offset commit failed (%s); the batch may be read again", exc)
            return
        for tp in result:
            if tp.error is not None:
                log.warning("offset commit of %s[%d] failed (%s); it may be read again", tp.topic, tp.partition, tp.error)
            else:
                self.committed[(tp.topic, tp.partition)] = tp.offset

    def _receive(self, timeout: float) -> Received | None:
        """Read and parse up to ``sink_batch_max`` messages; None when there were none."""
        messages = self.consumer.consume(num_messages=self.settings.sink_batch_max, timeout=timeout)
        messages = [m for m in messages if not self._is_error(m)]
        if not messages:
            return None
        if self.first_message_at is None:
            self.first_message_at = time.monotonic()
        batch, letters = self._parse(messages)
        return Received(messages, batch, letters, self.sink.prepare([p for _, p in batch]))

    def _finish(self, received: Received, stored: Callable[[], tuple[int, list[DeadLetter]]]) -> bool:
        """Dead-letter and commit a batch once ``stored()`` has returned; False (nothing committed) if not.

        ``stored`` returns what :meth:`_store` returned, or raises what it raised.
        """
        try:
            new, refused = stored()
            self._dead_letter(received.letters + refused)
        except RetryError:
            log.error("database still failing after %.0fs; re-reading the batch", self.settings.sink_retry_seconds)
            return False
        except KafkaException as exc:
            log.error("%s; re-reading the batch (its rows are stored once, whatever happens)", exc)
            return False
        self._commit(received.messages)
        self.stats.batches += 1
        self.stats.stored += new
        self.stats.duplicates += len(received.batch) - new - len(refused)
        self.stats.refused += len(refused)
        return True

    def step(self, timeout: float = 1.0) -> int:
        """Read one batch, store it, commit it; return how many messages it held (0: none, or re-read later)."""
        received = self._receive(timeout)
        if received is None:
            return 0
        if not self._finish(received, lambda: self._store(received.batch, received.prepared)):
            self._rewind(received.messages)
            return 0
        return len(received.messages)

    def _drain(self) -> None:
        """Wait for the batch being written, then commit it (or rewind to it)."""
        if self._pending is None:
            return
        received, write = self._pending
        self._pending = None
        if not self._finish(received, write.result):
            self._rewind(received.messages)

    def serve(self, until: Callable[[SinkRunner], bool] | None = None, timeout: float = 1.0) -> None:
        """Subscribe and consume until :meth:`stop` (or until ``until(self)`` is true), then leave the group.

        One batch is written (in a thread: psycopg2 releases the GIL while PostgreSQL works)
        while the next is read, parsed and prepared (``Sink.prepare``), the Python half of the
        work. At most one batch is in flight, and the order per batch is :meth:`step`'s: store,
        dead-letter, then commit that batch's own offsets (the consumer's position is already
        past them). If a write fails for good, the consumer rewinds to that batch, dropping the
        one read meanwhile (it follows in each partition). Before partitions are revoked, and
        at stop, the batch in flight is finished and committed. ``timeout``: the longest wait
        for messages when no write is in flight, seconds.
        """
        self.consumer.subscribe([self.topic], on_revoke=lambda *_: self._drain())
        log.info("sink started: group %s, topic %s", self.group, self.topic)
        try:
            with ThreadPoolExecutor(max_workers=1, thread_name_prefix="sink-write") as writer:
                while self._running and not (until is not None and until(self)):
                    if self.watch.lost(bool(self.consumer.assignment()), time.monotonic()):
                        self._replace_consumer()
                    # While a write is in flight, do not wait long for more: its commit waits for this read.
                    received = self._receive(timeout=0.05 if self._pending is not None else timeout)
                    pending, self._pending = self._pending, None  # (a revocation may have finished it)
                    if pending is not None and not self._finish(pending[0], pending[1].result):
                        self._rewind(pending[0].messages + (received.messages if received else []))
                        continue
                    if received is not None:
                        self._pending = (received, writer.submit(self._store, received.batch, received.prepared))
                self._drain()
        finally:
            self.consumer.close()
            self.sink.close()
            log.info("sink stopped: %s", json.dumps(self.stats.__dict__))

    def _replace_consumer(self) -> None:
        """Subscribe a new consumer in the place of one that will not rejoin its group; close the old one aside."""
        old, self.consumer = self.consumer, Consumer(consumer_config(self.settings, self.group))
        self.consumer.subscribe([self.topic], on_revoke=lambda *_: self._drain())
        # The old consumer's close may wait on the coordinator it cannot reach: not in this loop.
        threading.Thread(target=old.close, name="sink-close-lost-consumer", daemon=True).start()

    @staticmethod
    def _is_error(m: Message) -> bool:
        err = m.error()
        if err is None:
            return False
        if err.code() != KafkaError._PARTITION_EOF:
            log.warning("consumer error: %s", err)
        return True

    def run(self) -> None:
        """Consume until SIGINT/SIGTERM, then leave the group (every stored batch is committed)."""
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)
        self.serve()

