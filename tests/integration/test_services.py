"""Check the live services started by ``python -m ops.services up`` (``make up``).

These tests do not start anything: an unreachable service is a failure that says to run
``make up``, never a skip.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import uuid

import pytest

from ops.kafka import local as kafka_local
from ops.kafka import topics
from ops.kafka.clients import client_config
from ops.postgres import db, migrations
from ops.postgres import local as postgres_local
from schemas.settings import Settings

pytestmark = pytest.mark.integration

HINT = "run `make up` (python -m ops.services up) first"


@pytest.fixture(scope="module")
def settings() -> Settings:
    return Settings()


@pytest.fixture(scope="module")
def admin(settings: Settings):
    if not kafka_local.kafka_answers(settings, timeout=10):
        pytest.fail(f"Kafka does not answer at {settings.bootstrap}: {HINT}", pytrace=False)
    from confluent_kafka.admin import AdminClient

    return AdminClient(client_config(settings))


@pytest.fixture()
def schema_settings(settings: Settings):
    """Settings whose pg_schema is a fresh uuid-suffixed schema, dropped afterwards."""
    if not db.pg_answers(settings):
        pytest.fail("PostgreSQL does not accept connections at "
                    f"{db.redacted_dsn(settings.dsn)}: {HINT}", pytrace=False)
    from psycopg2 import sql

    schema = f"test_ops_{uuid.uuid4().hex[:12]}"
    s = Settings(pg_schema=schema)
    yield s
    conn = db.pg_connect(settings)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
    finally:
        conn.close()


def test_project_topics_exist_with_their_partitions(settings: Settings, admin):
    existing = admin.list_topics(timeout=10).topics
    for name, (partitions, _config) in topics.topic_specs(settings).items():
        assert name in existing, f"topic {name} missing: {HINT}"
        assert len(existing[name].partitions) == partitions, name
    assert len(existing[settings.topic_in].partitions) >= 4


def test_create_topic_is_idempotent(settings: Settings, admin):
    name = f"test.ops.{uuid.uuid4().hex[:12]}"
    try:
        assert topics.create_topic(settings, name, 2, {"retention.ms": "60000"}) is True
        assert topics.create_topic(settings, name, 2, {"retention.ms": "60000"}) is False
        assert len(admin.list_topics(name, timeout=10).topics[name].partitions) == 2
    finally:
        admin.delete_topics([name])[name].result(30)


def test_topic_configs_are_explicit(settings: Settings, admin):
    from confluent_kafka.admin import ConfigResource, ResourceType

    res = ConfigResource(ResourceType.TOPIC, settings.topic_in)
    cfg = admin.describe_configs([res])[res].result(30)
    assert cfg["cleanup.policy"].value == "delete"
    assert int(cfg["retention.ms"].value) >= 30 * topics.DAY_MS


def test_migrations_are_idempotent(schema_settings: Settings):
    first = migrations.apply_migrations(schema_settings)
    second = migrations.apply_migrations(schema_settings)
    expected = [m.version for m in migrations.list_migrations()]
    assert first == expected
    assert second == []
    from psycopg2 import sql

    schema = sql.Identifier(schema_settings.pg_schema)
    conn = db.pg_connect(schema_settings)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(sql.SQL("SELECT version, count(*) FROM {}.schema_migrations "
                                "GROUP BY version ORDER BY version").format(schema))
            assert cur.fetchall() == [(v, 1) for v in expected]
            cur.execute("SELECT to_regclass(%s)",
                        (sql.Identifier(schema_settings.pg_schema, "inferences").as_string(conn),))
            assert cur.fetchone()[0] is not None
    finally:
        conn.close()


def test_duplicate_inference_is_stored_once(schema_settings: Settings):
    from psycopg2 import sql

    from schemas.messages import Prediction
    from streams.sinks.postgres import PostgresSink

    migrations.apply_migrations(schema_settings)
    now = dt.datetime.now(dt.UTC)
    prediction = Prediction(
        id=f"msg-{uuid.uuid4().hex[:8]}", region="eu", model="intent", model_version="v1",
        label="greeting", probability=0.9, top_k=[("greeting", 0.9), ("farewell", 0.1)],
        clean_text="hello there", embedder_version="minilm-1", cache_hit=False, latency_ms=3.5,
        received_at=now, predicted_at=now)
    sink = PostgresSink(schema_settings.dsn, schema_settings.pg_schema)
    try:
        assert sink.write([prediction]) == 1
        assert sink.write([prediction]) == 0
    finally:
        sink.close()
    conn = db.pg_connect(schema_settings)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(sql.SQL("SELECT count(*), min(stored_at) IS NOT NULL, min(label), min(top_k::text) "
                                "FROM {}.inferences").format(sql.Identifier(schema_settings.pg_schema)))
            count, stored, label, top_k = cur.fetchone()
            assert (count, stored, label) == (1, True, "greeting")
            assert json.loads(top_k) == [["greeting", 0.9], ["farewell", 0.1]]
    finally:
        conn.close()


def test_local_postgres_requires_the_password(settings: Settings, monkeypatch):
    if not settings.local_pg:
        pytest.skip("PHRASESTREAM_PG_DSN points at an external server: its authentication is not ours")
    import psycopg2

    if not db.pg_answers(settings):
        pytest.fail(f"PostgreSQL does not accept connections at {db.redacted_dsn(settings.dsn)}: {HINT}",
                    pytrace=False)
    assert settings.pg_password_file.exists(), f"no {settings.pg_password_file}: {HINT}"
    st = settings.pg_password_file.stat()
    assert oct(st.st_mode & 0o777) == oct(0o600) and st.st_uid == os.geteuid()
    psycopg2.connect(settings.dsn, connect_timeout=5).close()

    monkeypatch.delenv("PGPASSWORD", raising=False)
    common = dict(host="127.0.0.1", port=settings.pg_port, user=postgres_local.PG_ROLE, dbname=postgres_local.PG_DATABASE,
                  passfile="/nonexistent/phrasestream-no-pgpass", connect_timeout=5)
    with pytest.raises(psycopg2.OperationalError, match="password"):
        psycopg2.connect(**common).close()
    with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
        psycopg2.connect(password="not-" + uuid.uuid4().hex, **common).close()
