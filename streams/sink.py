"""Write every prediction to PostgreSQL: its own consumer group on ``predictions.out``.

The sink is a separate process (``phrasestream sink``), so a database outage never stops
or slows the worker that publishes predictions. It

- reads predictions in batches (``consume(num_messages=...)``),
- writes each batch in one statement (``execute_values``) with
  ``ON CONFLICT (id, model, model_version) DO NOTHING``, so a prediction delivered twice
  is stored once,
- retries a failing write with exponential backoff (tenacity) for
  ``PHRASESTREAM_SINK_RETRY_SECONDS``; past that it rewinds to the batch's first offsets
  and reads it again, so nothing is lost and the consumer stays in its group,
- commits offsets only after the rows are stored,
- applies the SQL migrations at its first connection, so a new database gets its tables
  before the first write,
- dead-letters a row the database refuses (a bad value), after writing the rest of its
  batch one by one.

A record that is not a valid prediction goes to ``phrases.dlq`` with its reason.
"""

from __future__ import annotations

import json
import logging
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import psycopg2
import psycopg2.extensions
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from psycopg2 import sql
from psycopg2.extras import Json, execute_values
from pydantic import ValidationError
from tenacity import (
    RetryError,
    Retrying,
    retry_if_exception_type,
    retry_if_not_exception_type,
    stop_after_delay,
    wait_exponential,
)

from schemas.messages import DeadLetter, ErrorKind, Prediction
from schemas.settings import Settings

log = logging.getLogger("phrasestream.sink")

ROW_ERRORS = (psycopg2.DataError, psycopg2.IntegrityError, ValueError)
"""Errors that a row causes (bad value, constraint): retrying cannot help; the row is dead-lettered."""

COLUMNS = (
    "id", "region", "model", "model_version", "label", "probability", "top_k", "clean_text",
    "embedder_version", "cache_hit", "latency_ms", "received_at", "predicted_at",
)


class Sink(Protocol):
    """Store a batch of predictions; return how many rows were new."""

    def write(self, batch: Sequence[Prediction]) -> int: ...

    def close(self) -> None: ...


def row_of(p: Prediction) -> tuple:
    """Return the ``inferences`` row of a prediction, in ``COLUMNS`` order."""
    return (
        p.id, p.region, p.model, p.model_version, p.label, p.probability,
        Json([list(pair) for pair in p.top_k]), p.clean_text, p.embedder_version, p.cache_hit,
        p.latency_ms, p.received_at, p.predicted_at,
    )


class PostgresSink:
    """Insert predictions into ``<schema>.inferences``, idempotently, reconnecting as needed."""

    def __init__(self, dsn: str, schema: str = "public", on_connect: Callable[[], object] | None = None) -> None:
        self._dsn = dsn
        self._schema = schema
        self._on_connect = on_connect
        self._conn: psycopg2.extensions.connection | None = None
        self._insert = sql.SQL(
            "INSERT INTO {}.inferences ({}) VALUES %s ON CONFLICT (id, model, model_version) DO NOTHING"
        ).format(sql.Identifier(schema), sql.SQL(", ").join(map(sql.Identifier, COLUMNS)))

    def _connection(self) -> psycopg2.extensions.connection:
        if self._conn is None or self._conn.closed:
            if self._on_connect is not None:  # apply migrations once, at the first connection
                self._on_connect()
                self._on_connect = None
            self._conn = psycopg2.connect(self._dsn, connect_timeout=5, application_name="phrasestream-sink")
        return self._conn

    def write(self, batch: Sequence[Prediction]) -> int:
        """Insert the batch in one transaction; return the number of new rows."""
        if not batch:
            return 0
        conn = self._connection()
        try:
            with conn, conn.cursor() as cur:
                # RETURNING counts only the rows actually inserted (conflicts return nothing).
                rows = execute_values(
                    cur, self._insert.as_string(conn) + " RETURNING 1", [row_of(p) for p in batch],
                    page_size=len(batch), fetch=True,
                )
                return len(rows)
        except psycopg2.Error as exc:
            if not isinstance(exc, ROW_ERRORS):
                conn.close()  # the connection may be broken: open a new one next time
            raise

    def close(self) -> None:
        if self._conn is not None and not self._conn.closed:
            self._conn.close()


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


def consumer_config(settings: Settings) -> dict:
    """Return the confluent-kafka consumer settings of the sink's group."""
    return {
        "bootstrap.servers": settings.bootstrap,
        "group.id": settings.sink_group,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "enable.partition.eof": False,
        "session.timeout.ms": 30_000,
        "max.poll.interval.ms": 600_000,
    }


class SinkRunner:
    """Consume ``predictions.out`` and write to a :class:`Sink` until :meth:`stop`."""

    def __init__(
        self, settings: Settings, sink: Sink, consumer: Consumer | None = None, producer: Producer | None = None
    ) -> None:
        self.settings = settings
        self.sink = sink
        self.consumer = consumer or Consumer(consumer_config(settings))
        self._producer = producer or Producer({"bootstrap.servers": settings.bootstrap})
        self._running = True
        self.stats = SinkStats()

    def stop(self, *_: object) -> None:
        self._running = False

    def _parse(self, messages: Sequence[Message]) -> tuple[list[tuple[Message, Prediction]], list[DeadLetter]]:
        batch: list[tuple[Message, Prediction]] = []
        letters: list[DeadLetter] = []
        for m in messages:
            try:
                batch.append((m, Prediction.model_validate_json(m.value() or b"")))
            except ValidationError as exc:
                self.stats.invalid += 1
                letters.append(DeadLetter.of(ErrorKind.WRONG_TYPE, f"not a valid prediction: {exc.errors()[0]['msg']}",
                                             m.value(), m.topic(), m.partition(), m.offset()))
        return batch, letters

    def _write_with_retry(self, batch: Sequence[Prediction]) -> int:
        def on_retry(state) -> None:  # type: ignore[no-untyped-def]
            self.stats.retries += 1
            log.warning("database write failed (%s); retry %d", state.outcome.exception(), state.attempt_number)

        retrying = Retrying(
            retry=retry_if_exception_type(psycopg2.Error) & retry_if_not_exception_type(ROW_ERRORS),
            wait=wait_exponential(multiplier=0.2, max=5.0),
            stop=stop_after_delay(self.settings.sink_retry_seconds),
            before_sleep=on_retry,
            reraise=False,
        )
        return retrying(self.sink.write, batch)

    def _store(self, batch: Sequence[tuple[Message, Prediction]]) -> tuple[int, list[DeadLetter]]:
        """Write the batch; when the database refuses a row, write one by one and dead-letter the refused."""
        try:
            return self._write_with_retry([p for _, p in batch]), []
        except ROW_ERRORS:
            log.warning("the database refused a row of a batch of %d; writing them one by one", len(batch))
        new, refused = 0, []
        for m, prediction in batch:
            try:
                new += self._write_with_retry([prediction])
            except ROW_ERRORS as exc:
                refused.append(DeadLetter.of(ErrorKind.REJECTED_BY_DATABASE, f"the database refused this prediction: {exc}",
                                             m.value(), m.topic(), m.partition(), m.offset(), prediction.id))
        return new, refused

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
            key = (m.topic(), m.partition())
            first[key] = min(first.get(key, m.offset()), m.offset())
        for (topic, partition), offset in first.items():
            self.consumer.seek(TopicPartition(topic, partition, offset))
        self.stats.rewinds += 1

    def step(self, timeout: float = 1.0) -> int:
        """Read one batch, store it, commit it; return how many messages it held."""
        messages = self.consumer.consume(num_messages=self.settings.sink_batch_max, timeout=timeout)
        messages = [m for m in messages if not self._is_error(m)]
        if not messages:
            return 0
        batch, letters = self._parse(messages)
        try:
            new, refused = self._store(batch)
            self._dead_letter(letters + refused)
        except RetryError:
            log.error("database still failing after %.0fs; re-reading the batch", self.settings.sink_retry_seconds)
            self._rewind(messages)
            return 0
        except KafkaException as exc:
            log.error("%s; re-reading the batch (its rows are stored once, whatever happens)", exc)
            self._rewind(messages)
            return 0
        try:
            self.consumer.commit(asynchronous=False)
        except KafkaException as exc:  # e.g. a rebalance: the next owner re-reads, the rows are idempotent
            log.warning("offset commit failed (%s); the batch may be read again", exc)
        self.stats.batches += 1
        self.stats.stored += new
        self.stats.duplicates += len(batch) - new - len(refused)
        self.stats.refused += len(refused)
        return len(messages)

    @staticmethod
    def _is_error(m: Message) -> bool:
        err = m.error()
        if err is None:
            return False
        if err.code() != KafkaError._PARTITION_EOF:
            log.warning("consumer error: %s", err)
        return True

    def run(self) -> None:
        """Consume until SIGINT/SIGTERM, then commit and leave the group."""
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)
        self.consumer.subscribe([self.settings.topic_out])
        log.info("sink started: group %s, topic %s", self.settings.sink_group, self.settings.topic_out)
        try:
            while self._running:
                self.step()
        finally:
            self.consumer.close()
            self.sink.close()
            log.info("sink stopped: %s", json.dumps(self.stats.__dict__))


def run_sink(settings: Settings) -> None:
    """Run the PostgreSQL sink until SIGINT/SIGTERM."""
    from ops.services import apply_migrations

    sink = PostgresSink(settings.dsn, settings.pg_schema, on_connect=lambda: apply_migrations(settings))
    SinkRunner(settings, sink).run()
