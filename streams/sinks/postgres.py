"""Write every prediction to PostgreSQL: its own consumer group on ``predictions.out``.

The sink is a separate process (``phrasestream sink``), so a database outage never stops
or slows the worker that publishes predictions. It

- reads predictions in batches (``consume(num_messages=PHRASESTREAM_SINK_BATCH_MAX)``),
- writes each batch in one transaction: ``COPY`` into a temporary staging table, then
  ``INSERT ... SELECT ... ON CONFLICT (id, model, model_version) DO NOTHING``, so a
  prediction delivered twice is stored once,
- retries a failing write with exponential backoff (tenacity) for
  ``PHRASESTREAM_SINK_RETRY_SECONDS``; past that it rewinds to the batch's first offsets
  and reads it again, so nothing is lost and the consumer stays in its group,
- commits the batch's offsets only after its rows are stored (and its dead letters delivered),
- applies the SQL migrations at its first connection, so a new database gets its tables
  before the first write,
- dead-letters a row the database refuses (a bad value) and stores the rest of its batch:
  the batch is split in halves until the refused rows stand alone.

A record that is not a valid prediction goes to ``phrases.dlq`` with its reason.

The same process stores the workers' serving rollups (``serving.rollups``, a few messages
every 10 s) in ``serving_rollups``: a second :class:`SinkRunner` in a thread, in consumer
group ``<PHRASESTREAM_SINK_GROUP>-rollups``, writing with
``streams.rollups.PostgresRollupSink`` (``ON CONFLICT (delta_id) DO NOTHING``), with the
same retries, rewinds, dead letters and commit-after-store. Its own group and consumer keep
it out of the predictions' batches and rebalances.

Why it is written this way (measured with ``streams.tools.sink_bench``, see its docstring):

- ``COPY`` + ``INSERT ... SELECT`` instead of ``execute_values``: ``execute_values`` quotes
  every value in Python (``mogrify``) and the server parses one huge statement; ``COPY``
  streams rows that the server parses natively. ``COPY`` cannot say ``ON CONFLICT``, hence
  the staging table; it is a session-local ``TEMPORARY`` table (no WAL, no other session
  sees it) emptied at every commit and rollback (``ON COMMIT DELETE ROWS``).
- The rows are written as CSV by the C ``csv`` module with every field quoted: quoting is
  the only escaping CSV has (a quote is doubled), tabs, newlines and backslashes are plain
  data inside quotes, and no value can be read as NULL or as the end-of-data marker.
- New rows are counted with ``cursor.rowcount``, not ``RETURNING 1`` (no result rows to
  send and fetch).
- ``top_k``'s JSON is made by pydantic (Rust), not ``json.dumps``: 2 instead of 9 µs a row.
- Batches of 5000 (``PHRASESTREAM_SINK_BATCH_MAX``, was 500): what each batch costs once (a
  Kafka commit round trip, a PostgreSQL commit and its WAL flush) is spread over 10x the
  rows. The CPU per row is flat above ~1000, so larger batches buy little and make each
  retry, and the halving around a refused row, larger.
- While one batch is written (in a thread, see :meth:`SinkRunner.serve`), the next is read,
  parsed and encoded: the Python half and the PostgreSQL half of the work overlap. Back to
  back it was 1.0-1.8x (median 1.3x) faster than writing in turn, for 10-15% more CPU.
- Parsing stays pydantic's ``Prediction.model_validate_json`` (Rust): the validation is what
  sends a bad record to the DLQ, ``json.loads`` alone is slower, and orjson is not a
  dependency. It is now the largest cost (~16 µs a row, half of it ``top_k``'s tuples).
- ``synchronous_commit`` stays ``on``: with it off, a crash of PostgreSQL could lose rows
  whose offsets the sink has already committed, which breaks at-least-once. With batches
  of 5000, its one WAL flush per batch costs little anyway.

Measured (``python -m streams.tools.sink_bench --rows 200000``, 2 shared cores, back to back):
10,100 rows/s before (``execute_values``, batches of 500; 75 µs of CPU a row: 45 in Python,
30 in PostgreSQL), 20,700-25,700 rows/s after (42 µs of CPU a row: 28 + 14).
"""

from __future__ import annotations

import csv
import io
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
import psycopg2.extensions
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from psycopg2 import sql
from pydantic import ConfigDict, TypeAdapter, ValidationError
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

log = logging.getLogger("phrasestream.sink")

ROW_ERRORS = (psycopg2.DataError, psycopg2.IntegrityError, ValueError)
"""Errors that a row causes (bad value, constraint): retrying cannot help; the row is dead-lettered.

``ValueError`` covers text that cannot be encoded as UTF-8 (a lone surrogate), raised before
anything is sent.
"""

COLUMNS = (
    "id", "region", "model", "model_version", "label", "probability", "top_k", "clean_text",
    "embedder_version", "cache_hit", "latency_ms", "received_at", "predicted_at",
)

STAGING_TABLE = "phrasestream_sink_staging"
"""The session's temporary table that ``COPY`` fills before the idempotent insert."""


class Sink(Protocol):
    """Store a batch of predictions; return how many rows were new."""

    def prepare(self, batch: Sequence[Prediction]) -> Sequence[Prediction]:
        """Return the batch ready for :meth:`write` (encoded, say); called while the previous batch is written."""
        ...

    def write(self, batch: Sequence[Prediction]) -> int: ...

    def close(self) -> None: ...


TOP_K_JSON = TypeAdapter(list[tuple[str, float]], config=ConfigDict(ser_json_inf_nan="constants"))
"""Serialises ``top_k`` in Rust (4x faster than ``json.dumps``); a NaN or infinity stays one, so
PostgreSQL refuses the row as it refused ``json.dumps``' text (JSON has no such numbers)."""


def row_of(p: Prediction) -> tuple:
    """Return the ``inferences`` row of a prediction, in ``COLUMNS`` order, as ``COPY`` reads it.

    ``top_k`` is its JSON text. Raises ``ValueError`` for text that is not valid Unicode.
    """
    return (
        p.id, p.region, p.model, p.model_version, p.label, p.probability,
        TOP_K_JSON.dump_json(p.top_k).decode("utf-8"), p.clean_text, p.embedder_version, p.cache_hit,
        p.latency_ms, p.received_at, p.predicted_at,
    )


def copy_csv(batch: Sequence[Prediction]) -> bytes:
    """Return the batch as UTF-8 CSV for ``COPY ... (FORMAT csv)``: every field quoted, one row a line.

    Raises ``UnicodeEncodeError`` (a ``ValueError``) for text that is not valid Unicode.

    >>> from datetime import UTC, datetime
    >>> t = datetime(2026, 11, 27, tzinfo=UTC)
    >>> p = Prediction(id="1", region="global", model="intent", model_version="v1", label="a",
    ...                probability=0.5, top_k=[("a", 0.5)], clean_text="hi there", embedder_version="e",
    ...                cache_hit=False, latency_ms=1.0, received_at=t, predicted_at=t)
    >>> copy_csv([p]).decode()
    '"1","global","intent","v1","a","0.5","[[""a"",0.5]]","hi there","e","False","1.0","2026-11-27 00:00:00+00:00","2026-11-27 00:00:00+00:00"\\n'
    """
    buf = io.StringIO()
    csv.writer(buf, quoting=csv.QUOTE_ALL, lineterminator="\n").writerows(map(row_of, batch))
    return buf.getvalue().encode("utf-8")


class CopyBatch(list[Prediction]):
    """Predictions with their ``COPY`` data, made ahead by :meth:`PostgresSink.prepare`."""

    def __init__(self, batch: Sequence[Prediction], data: bytes) -> None:
        super().__init__(batch)
        self.data = data


class PostgresSink:
    """Insert predictions into ``<schema>.inferences``, idempotently, reconnecting as needed."""

    def __init__(self, dsn: str, schema: str = "public", on_connect: Callable[[], object] | None = None) -> None:
        self._dsn = dsn
        self._schema = schema
        self._on_connect = on_connect
        self._conn: psycopg2.extensions.connection | None = None
        columns = sql.SQL(", ").join(map(sql.Identifier, COLUMNS))
        staging, table = sql.Identifier(STAGING_TABLE), sql.Identifier(schema, "inferences")
        # The staging table takes its column types from the real table, so it follows the migrations.
        self._create_staging = sql.SQL(
            "CREATE TEMPORARY TABLE IF NOT EXISTS {} ON COMMIT DELETE ROWS AS SELECT {} FROM {} WITH NO DATA"
        ).format(staging, columns, table)
        self._copy = sql.SQL("COPY {} ({}) FROM STDIN WITH (FORMAT csv)").format(staging, columns)
        self._insert = sql.SQL(
            "INSERT INTO {} ({}) SELECT {} FROM {} ON CONFLICT (id, model, model_version) DO NOTHING"
        ).format(table, columns, columns, staging)

    def _connection(self) -> psycopg2.extensions.connection:
        if self._conn is None or self._conn.closed:
            if self._on_connect is not None:  # apply migrations once, at the first connection
                self._on_connect()
                self._on_connect = None
            conn = psycopg2.connect(self._dsn, connect_timeout=5, application_name="phrasestream-sink")
            try:
                conn.set_client_encoding("UTF8")  # copy_csv sends UTF-8
                with conn, conn.cursor() as cur:
                    cur.execute(self._create_staging)
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    def prepare(self, batch: Sequence[Prediction]) -> Sequence[Prediction]:
        """Return the batch with its ``COPY`` data (the runner calls this while it waits for the previous write)."""
        try:
            return CopyBatch(batch, copy_csv(batch))
        except ValueError:  # a row that cannot be encoded: write() raises it, as a row error
            return batch

    def write(self, batch: Sequence[Prediction]) -> int:
        """Insert the batch in one transaction; return the number of new rows."""
        if not batch:
            return 0
        # before the connection: a row that cannot be encoded is a row error
        data = batch.data if isinstance(batch, CopyBatch) else copy_csv(batch)
        conn = self._connection()
        try:
            with conn, conn.cursor() as cur:
                cur.copy_expert(self._copy.as_string(conn), io.BytesIO(data), size=1 << 20)
                cur.execute(self._insert)
                return cur.rowcount  # the rows actually inserted: conflicts are not counted
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


def rollup_runner(settings: Settings, on_connect: Callable[[], object] | None = None, sink: Any = None,
                  consumer: Consumer | None = None, producer: Producer | None = None) -> SinkRunner:
    """Return the runner that stores ``serving.rollups`` in ``serving_rollups`` (see the module docstring)."""
    from schemas.messages import ServingRollup
    from streams.rollups import PostgresRollupSink

    if sink is None:
        sink = PostgresRollupSink(settings.dsn, settings.pg_schema, on_connect=on_connect)
    return SinkRunner(settings, sink, consumer, producer, topic=settings.topic_rollups,
                      group=f"{settings.sink_group}-rollups", parse=ServingRollup.model_validate_json,
                      what="serving rollup")


def run_sink(settings: Settings) -> None:
    """Run the PostgreSQL sink until SIGINT/SIGTERM: predictions here, serving rollups in a thread.

    The rollups stop after the predictions' runner has finished its last batch. Its
    ``/metrics`` (``streams.metrics.SinkMetrics``) count the predictions' runner only.
    """
    import threading

    from ops.postgres.migrations import apply_migrations
    from streams.metrics import SinkMetrics, serve_metrics

    metrics = SinkMetrics()
    sink = PostgresSink(settings.dsn, settings.pg_schema, on_connect=lambda: apply_migrations(settings))
    # librdkafka's statistics (every 5 s, from within consume()) carry each partition's lag
    consumer = Consumer({**consumer_config(settings), "statistics.interval.ms": 5000,
                         "stats_cb": metrics.on_kafka_stats})
    runner = SinkRunner(settings, metrics.timed(sink), consumer=consumer)
    metrics.watch(lambda: runner.stats)
    serve_metrics(metrics.registry, settings.metrics_host, settings.sink_metrics_port, "sink")
    rollups = rollup_runner(settings, on_connect=lambda: apply_migrations(settings))
    thread = threading.Thread(target=rollups.serve, name="sink-rollups", daemon=True)
    thread.start()
    try:
        runner.run()
    finally:
        rollups.stop()
        thread.join(timeout=settings.sink_retry_seconds + 30.0)
