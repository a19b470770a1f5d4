"""Check the live services started by ``python -m ops.services up`` (``make up``).

These tests do not start anything: an unreachable service is a failure that says to run
``make up``, never a skip.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid

import pytest

from ops import services
from schemas.settings import Settings

pytestmark = pytest.mark.integration

HINT = "run `make up` (python -m ops.services up) first"


@pytest.fixture(scope="module")
def settings() -> Settings:
    return Settings()


@pytest.fixture(scope="module")
def admin(settings: Settings):
    if not services.kafka_answers(settings.bootstrap, timeout=10):
        pytest.fail(f"Kafka does not answer at {settings.bootstrap}: {HINT}", pytrace=False)
    from confluent_kafka.admin import AdminClient

    return AdminClient({"bootstrap.servers": settings.bootstrap})


@pytest.fixture()
def schema_settings(settings: Settings):
    """Settings whose pg_schema is a fresh uuid-suffixed schema, dropped afterwards."""
    if not services.pg_answers(settings):
        pytest.fail("PostgreSQL does not accept connections at "
                    f"{services._redacted_dsn(settings.dsn)}: {HINT}", pytrace=False)
    from psycopg2 import sql

    schema = f"test_ops_{uuid.uuid4().hex[:12]}"
    s = Settings(pg_schema=schema)
    yield s
    conn = services.pg_connect(settings)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
    finally:
        conn.close()


def test_project_topics_exist_with_their_partitions(settings: Settings, admin):
    topics = admin.list_topics(timeout=10).topics
    for name, (partitions, _config) in services.topic_specs(settings).items():
        assert name in topics, f"topic {name} missing: {HINT}"
        assert len(topics[name].partitions) == partitions, name
    assert len(topics[settings.topic_in].partitions) >= 4


def test_create_topic_is_idempotent(settings: Settings, admin):
    name = f"test.ops.{uuid.uuid4().hex[:12]}"
    try:
        assert services.create_topic(settings, name, 2, {"retention.ms": "60000"}) is True
        assert services.create_topic(settings, name, 2, {"retention.ms": "60000"}) is False
        assert len(admin.list_topics(name, timeout=10).topics[name].partitions) == 2
    finally:
        admin.delete_topics([name])[name].result(30)


def test_topic_configs_are_explicit(settings: Settings, admin):
    from confluent_kafka.admin import ConfigResource, ResourceType

    res = ConfigResource(ResourceType.TOPIC, settings.topic_in)
    cfg = admin.describe_configs([res])[res].result(30)
    assert cfg["cleanup.policy"].value == "delete"
    assert int(cfg["retention.ms"].value) >= 30 * services.DAY_MS


def test_migrations_are_idempotent(schema_settings: Settings):
    first = services.apply_migrations(schema_settings)
    second = services.apply_migrations(schema_settings)
    expected = [m.version for m in services.list_migrations()]
    assert first == expected
    assert second == []
    conn = services.pg_connect(schema_settings)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(f'SELECT version, count(*) FROM "{schema_settings.pg_schema}".schema_migrations '
                        "GROUP BY version ORDER BY version")
            assert cur.fetchall() == [(v, 1) for v in expected]
            cur.execute("SELECT to_regclass(%s)", (f'"{schema_settings.pg_schema}".inferences',))
            assert cur.fetchone()[0] is not None
    finally:
        conn.close()


def test_duplicate_inference_is_stored_once(schema_settings: Settings):
    services.apply_migrations(schema_settings)
    from psycopg2 import sql

    now = dt.datetime.now(dt.timezone.utc)
    row = ("msg-1", "eu", "intent", "v1", "greeting", 0.9,
           json.dumps([{"label": "greeting", "p": 0.9}]), "hello there", "minilm-1", False, 3.5, now, now)
    insert = sql.SQL(
        "INSERT INTO {}.inferences (id, region, model, model_version, label, probability, top_k, clean_text,"
        " embedder_version, cache_hit, latency_ms, received_at, predicted_at)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s::jsonb, %s, %s, %s, %s, %s, %s)"
        " ON CONFLICT (id, model, model_version) DO NOTHING").format(sql.Identifier(schema_settings.pg_schema))
    conn = services.pg_connect(schema_settings)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(insert, row)
            assert cur.rowcount == 1
            cur.execute(insert, row)
            assert cur.rowcount == 0
            other_version = row[:3] + ("v2",) + row[4:]
            cur.execute(insert, other_version)
            assert cur.rowcount == 1
            cur.execute(sql.SQL("SELECT count(*), min(stored_at) IS NOT NULL FROM {}.inferences WHERE id = %s")
                        .format(sql.Identifier(schema_settings.pg_schema)), ("msg-1",))
            assert cur.fetchone() == (2, True)
    finally:
        conn.close()
