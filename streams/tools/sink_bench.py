"""Measure how many rows per second the PostgreSQL sink stores: ``bench_sink``.

It fills a scratch predictions topic with ``n`` realistic predictions (unique ids, a 3-pair
``top_k``, a ~40-character ``clean_text``), then runs the sink's own classes in this process
on it (a scratch consumer group writing to a scratch schema, migrations applied at its first
connection, as ``phrasestream sink`` does) until the group has committed every offset, checks
that exactly ``n`` rows arrived, and deletes its topic, group and schema. It talks only to the
settings' broker, which must be on this machine (127.0.0.1).

The clock runs from the moment the sink receives its first message to the commit of the last
offset, so it covers reading, parsing, writing and committing every row, and not the start-up
(connection, migrations, joining the group). A benchmark, not a test: it prints figures and
asserts nothing about speed.

    python -m streams.tools.sink_bench --rows 200000      # one JSON line: sink_rows_s, rows, seconds, batch_max
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

from ops.kafka.clients import client_config
from ops.kafka.offsets import committed_offsets, end_offsets
from ops.kafka.produce import produce_retrying
from ops.logs import configure_logging
from schemas.messages import Prediction
from schemas.settings import Settings

log = logging.getLogger("phrasestream.sink_bench")

MAX_ROWS = 5_000_000
"""The most predictions one run may produce (a bound on the scratch topic and schema)."""

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")

_WORDS = ("what", "is", "my", "balance", "play", "some", "jazz", "book", "a", "flight", "to", "paris",
          "set", "an", "alarm", "for", "seven", "transfer", "money", "savings", "reset", "pin", "weather",
          "tomorrow", "in", "london", "cancel", "order", "how", "do", "i", "change", "card", "limit")
_LABELS = ("balance", "play_music", "book_flight", "alarm", "transfer", "pin_change", "weather",
           "cancel_order", "card_limit", "greeting", "goodbye", "exchange_rate")


class BenchError(RuntimeError):
    """The benchmark could not run or its result is wrong (rows missing or duplicated)."""


def scratch_settings(settings: Settings, tag: str | None = None) -> Settings:
    """Return ``settings`` with a uuid-suffixed predictions topic, DLQ, sink group and schema."""
    suffix = tag or uuid.uuid4().hex[:10]
    return settings.model_copy(update={
        "topic_out": f"bench-{suffix}.predictions.out",
        "topic_dlq": f"bench-{suffix}.phrases.dlq",
        "sink_group": f"bench-{suffix}-sink",
        "pg_schema": f"bench_{suffix}",
    })


def check_local(settings: Settings) -> None:
    """Raise :class:`BenchError` unless every bootstrap server of ``settings`` is on this machine."""
    for server in settings.bootstrap.split(","):
        host = urlsplit("//" + server.strip()).hostname
        if host not in LOCAL_HOSTS:
            msg = f"the sink benchmark fills a topic and runs only on a local broker; bootstrap is {settings.bootstrap!r}"
            raise BenchError(msg)


def predictions(n: int, seed: int = 7) -> Iterator[Prediction]:
    """Yield ``n`` realistic predictions with unique ids (deterministic for a seed)."""
    rnd = random.Random(seed)
    t0 = datetime.now(UTC)
    for i in range(n):
        words: list[str] = []
        while sum(len(w) + 1 for w in words) < 40:
            words.append(rnd.choice(_WORDS))
        labels = rnd.sample(_LABELS, 3)
        probs = sorted((rnd.random() for _ in range(3)), reverse=True)
        total = sum(probs)
        top_k = [(label, round(p / total, 6)) for label, p in zip(labels, probs)]
        received = t0 + timedelta(microseconds=i * 50)
        yield Prediction(
            id=f"bench-{i:09d}-{rnd.getrandbits(32):08x}", region="global", model="intent", model_version="v3",
            label=top_k[0][0], probability=top_k[0][1], top_k=top_k, clean_text=" ".join(words),
            embedder_version="minilm-l6-v2-tf-1", cache_hit=rnd.random() < 0.2,
            latency_ms=round(rnd.uniform(2.0, 40.0), 3), received_at=received,
            predicted_at=received + timedelta(milliseconds=5),
        )


def fill_topic(settings: Settings, n: int) -> None:
    """Create ``settings.topic_out`` (``partitions_out`` partitions) and produce ``n`` predictions to it."""
    from confluent_kafka import Producer

    from ops.kafka.topics import create_topic

    create_topic(settings, settings.topic_out, settings.partitions_out, {"retention.ms": str(24 * 3600 * 1000)})
    producer = Producer(client_config(settings, {"linger.ms": 20,
                                                 "queue.buffering.max.messages": 500_000}))
    for p in predictions(n):
        produce_retrying(producer, settings.topic_out, p.to_bytes(), p.id.encode(), wait_s=0.1)
        producer.poll(0)
    if producer.flush(120) > 0:
        raise BenchError(f"could not deliver {n} predictions to {settings.topic_out}")


def count_rows(settings: Settings) -> tuple[int, int]:
    """Return (rows, distinct (id, model, model_version)) in ``<pg_schema>.inferences``."""
    from psycopg2 import sql

    from ops.postgres.db import pg_connect

    conn = pg_connect(settings)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(sql.SQL("SELECT count(*), count(DISTINCT (id, model, model_version)) FROM {}")
                        .format(sql.Identifier(settings.pg_schema, "inferences")))
            rows, distinct = cur.fetchone()
            return int(rows), int(distinct)
    finally:
        conn.close()


def cleanup(settings: Settings) -> None:
    """Delete the scratch topics, consumer group and schema of ``settings``; log what could not be."""
    from confluent_kafka.admin import AdminClient
    from psycopg2 import sql

    from ops.postgres.db import pg_connect

    admin = AdminClient(client_config(settings))
    existing = admin.list_topics(timeout=10).topics
    topics = [t for t in (settings.topic_out, settings.topic_dlq) if t in existing]
    for topic, fut in (admin.delete_topics(topics, operation_timeout=30) if topics else {}).items():
        try:
            fut.result(60)
        except Exception as exc:  # noqa: BLE001 - clean up what we can, say what is left
            log.warning("scratch topic %s not deleted: %s", topic, exc)
    for group, fut in admin.delete_consumer_groups([settings.sink_group], request_timeout=30).items():
        try:
            fut.result(60)
        except Exception as exc:  # noqa: BLE001 - a group that never committed does not exist
            log.debug("scratch group %s not deleted: %s", group, exc)
    conn = pg_connect(settings)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(settings.pg_schema)))
    finally:
        conn.close()


def bench_sink(settings: Settings, n_rows: int, *, timeout_s: float) -> dict:
    """Measure the sink alone on ``n_rows`` predictions; return its figures.

    Returns ``{"sink_rows_s", "rows", "seconds", "batch_max"}`` (``batch_max`` is
    ``settings.sink_batch_max``, ``PHRASESTREAM_SINK_BATCH_MAX``). Raises :class:`BenchError`
    when the broker is not local, ``n_rows`` is out of 1..``MAX_ROWS``, the sink has not
    committed everything within ``timeout_s`` seconds, or the rows stored are not exactly the
    predictions produced. Scratch topic, group and schema are deleted in every case.
    """
    from ops.postgres.migrations import apply_migrations
    from streams.sinks.base import SinkRunner
    from streams.sinks.postgres import PostgresSink

    if not 1 <= n_rows <= MAX_ROWS:
        raise BenchError(f"n_rows must be within 1..{MAX_ROWS}, not {n_rows}")
    if timeout_s <= 0:
        raise BenchError(f"timeout_s must be positive, not {timeout_s}")
    check_local(settings)
    scratch = scratch_settings(settings)
    deadline = time.monotonic() + timeout_s
    try:
        fill_topic(scratch, n_rows)
        ends = end_offsets(client_config(scratch), scratch.topic_out)
        if sum(ends.values()) != n_rows:
            raise BenchError(f"{scratch.topic_out} holds {sum(ends.values())} messages, not {n_rows}")
        topic = scratch.topic_out
        sink = PostgresSink(scratch.dsn, scratch.pg_schema, on_connect=lambda: apply_migrations(scratch))
        runner = SinkRunner(scratch, sink)
        done_at: list[float] = []

        def finished(r: SinkRunner) -> bool:
            if all(r.committed.get((topic, p), 0) >= end for p, end in ends.items()):
                done_at.append(time.monotonic())
                return True
            return time.monotonic() > deadline

        runner.serve(until=finished)
        if not done_at or runner.first_message_at is None:
            raise BenchError(f"the sink committed {sum(runner.committed.values())} of {n_rows} offsets "
                             f"within {timeout_s:.0f}s")
        seconds = done_at[0] - runner.first_message_at
        committed = committed_offsets(client_config(scratch), scratch.sink_group, topic)
        if any(committed.get(p) != end for p, end in ends.items()):
            raise BenchError(f"the group's committed offsets {committed} are not the topic's ends {ends}")
        rows, distinct = count_rows(scratch)
        if rows != n_rows or distinct != n_rows:
            raise BenchError(f"{rows} rows ({distinct} distinct) arrived for {n_rows} predictions")
        return {"sink_rows_s": round(n_rows / seconds, 1), "rows": n_rows, "seconds": round(seconds, 3),
                "batch_max": scratch.sink_batch_max}
    finally:
        cleanup(scratch)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="measure the PostgreSQL sink alone (rows stored per second)")
    parser.add_argument("--rows", type=int, default=200_000, help="predictions to produce and store")
    parser.add_argument("--timeout", type=float, default=600.0, help="give up after this many seconds")
    args = parser.parse_args(argv)
    settings = Settings()
    configure_logging(settings, level=logging.WARNING)
    print(json.dumps(bench_sink(settings, args.rows, timeout_s=args.timeout)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
