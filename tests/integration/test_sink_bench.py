"""The sink's COPY path on the live PostgreSQL, and ``bench_sink`` end to end (correctness, never speed)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime

import psycopg2
import pytest
from confluent_kafka.admin import AdminClient
from fakes import FakeConsumer, FakeLetterBox, kafka_message
from psycopg2 import sql

from ops.kafka.clients import client_config
from ops.postgres.db import pg_connect
from ops.postgres.migrations import apply_migrations
from schemas.messages import ErrorKind, Prediction
from schemas.settings import Settings
from streams.sinks.base import SinkRunner
from streams.sinks.postgres import PostgresSink
from streams.tools import sink_bench

pytestmark = pytest.mark.integration

T0 = datetime(2026, 11, 27, 12, 0, 0, 123456, tzinfo=UTC)

AWKWARD = [
    "tab\there", "new\nline", "carriage\rreturn", "crlf\r\n", "back\\slash", "trailing\\", 'a "quote"', '"',
    "it's", "semi;colon, comma", "\\.", "\\N", "NULL", "", " spaced ", "café ☕ 日本語 😀", "\\t not a tab",
    "\\.\n", "line\n\\.\nafter",
]


def prediction(pid: str, text: str = "x", label: str = "balance", top_k: list | None = None) -> Prediction:
    return Prediction(id=pid, region="global", model="intent", model_version="v1", label=label, probability=0.25,
                      top_k=top_k if top_k is not None else [(label, 0.25), ("other", 0.125)], clean_text=text,
                      embedder_version="e1", cache_hit=True, latency_ms=1.5, received_at=T0, predicted_at=T0)


@pytest.fixture
def schema_settings(base_settings: Settings) -> Iterator[Settings]:
    settings = sink_bench.scratch_settings(base_settings)
    apply_migrations(settings)
    try:
        yield settings
    finally:
        conn = pg_connect(settings)
        try:
            with conn, conn.cursor() as cur:
                cur.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(settings.pg_schema)))
        finally:
            conn.close()


def rows(settings: Settings) -> dict[str, tuple]:
    conn = pg_connect(settings)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(sql.SQL("SELECT id, label, clean_text, top_k, probability, cache_hit, received_at FROM {}")
                        .format(sql.Identifier(settings.pg_schema, "inferences")))
            return {r[0]: r[1:] for r in cur.fetchall()}
    finally:
        conn.close()


def test_awkward_text_is_stored_exactly_as_sent(schema_settings: Settings):
    batch = [prediction(f"id-{i}-{text}", text=text, label=text) for i, text in enumerate(AWKWARD)]
    sink = PostgresSink(schema_settings.dsn, schema_settings.pg_schema)
    try:
        assert sink.write(batch) == len(batch)
    finally:
        sink.close()
    stored = rows(schema_settings)
    assert sorted(stored) == sorted(p.id for p in batch)
    for p in batch:
        label, clean_text, top_k, probability, cache_hit, received_at = stored[p.id]
        assert (label, clean_text) == (p.label, p.clean_text)
        assert top_k == [[p.label, 0.25], ["other", 0.125]]
        assert (probability, cache_hit, received_at) == (0.25, True, T0)


def test_a_duplicate_delivery_is_stored_once_within_and_across_batches(schema_settings: Settings):
    sink = PostgresSink(schema_settings.dsn, schema_settings.pg_schema)
    try:
        assert sink.write([prediction("a"), prediction("a"), prediction("b")]) == 2
        assert sink.write([prediction("b"), prediction("c")]) == 1
        sink.close()  # a new connection makes its own staging table
        assert sink.write([prediction("c"), prediction("d")]) == 1
    finally:
        sink.close()
    assert sorted(rows(schema_settings)) == ["a", "b", "c", "d"]


def test_rows_postgres_refuses_are_dead_lettered_and_the_rest_of_the_batch_stored(schema_settings: Settings):
    nan = prediction("nan-in-json").to_bytes().replace(b'["other",0.125]', b'["other",NaN]')
    assert b"NaN" in nan
    refused = {7: prediction("nul-label", label="nul\x00label").to_bytes(),  # text cannot hold NUL
               40: nan}                                                       # jsonb has no NaN
    values = [refused.get(i, prediction(f"ok-{i}").to_bytes()) for i in range(64)]
    consumer, producer = FakeConsumer([[kafka_message(v, i) for i, v in enumerate(values)]]), FakeLetterBox()
    sink = PostgresSink(schema_settings.dsn, schema_settings.pg_schema)
    runner = SinkRunner(schema_settings.model_copy(update={"sink_retry_seconds": 5.0}), sink,
                        consumer=consumer, producer=producer)  # type: ignore[arg-type]
    try:
        assert runner.step() == 64
    finally:
        sink.close()
    assert sorted(rows(schema_settings)) == sorted(f"ok-{i}" for i in range(64) if i not in refused)
    letters = [json.loads(v) for v in producer.sent]
    assert sorted((letter["source_offset"], letter["id"]) for letter in letters) == sorted(
        [(7, "nul-label"), (40, "nan-in-json")])
    assert {letter["error_kind"] for letter in letters} == {ErrorKind.REJECTED_BY_DATABASE.value}
    assert consumer.offsets == [[(0, 64)]]
    assert (runner.stats.stored, runner.stats.refused, runner.stats.retries) == (62, 2, 0)


def test_bench_sink_stores_every_prediction_exactly_once_and_removes_its_scratch(base_settings: Settings,
                                                                                monkeypatch: pytest.MonkeyPatch):
    used: list[Settings] = []
    original = sink_bench.scratch_settings

    def remembered(settings: Settings, tag: str | None = None) -> Settings:
        used.append(original(settings, tag))
        return used[-1]

    monkeypatch.setattr(sink_bench, "scratch_settings", remembered)

    result = sink_bench.bench_sink(base_settings, 3000, timeout_s=300)  # checks n rows, n distinct, offsets at the end

    assert (result["rows"], result["batch_max"]) == (3000, base_settings.sink_batch_max)
    assert result["seconds"] > 0 and result["sink_rows_s"] == pytest.approx(3000 / result["seconds"], rel=0.01)
    [scratch] = used
    admin = AdminClient(client_config(base_settings))
    assert scratch.topic_out not in admin.list_topics(timeout=10).topics
    groups = admin.list_consumer_groups(request_timeout=10).result(30)
    assert scratch.sink_group not in {g.group_id for g in groups.valid}
    with psycopg2.connect(base_settings.dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM pg_namespace WHERE nspname = %s", (scratch.pg_schema,))
        assert cur.fetchone()[0] == 0
