"""Fixtures for tests against the live Kafka broker and PostgreSQL that `make test` starts.

Each test gets its own topics, Faust app id, sink consumer group and database schema
(uuid-suffixed), so tests never see each other's messages. Workers and sinks run as real
``phrasestream`` processes with that configuration in their environment.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg2
import pytest
from confluent_kafka import Consumer, Producer
from psycopg2 import sql

from models.registry.pointers import publish, read_all
from ops.kafka.clients import client_config
from ops.kafka.local import kafka_answers
from ops.kafka.topics import create_topics
from ops.postgres.db import pg_answers
from ops.postgres.migrations import apply_migrations
from schemas.settings import Settings

# tests/unit/fakes.py holds the stand-ins every test shares (fake Kafka messages, consumer, producer)
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))

START_HINT = "start the services with `make up` (or `.venv/bin/phrasestream up`) and train with `make train`"


@pytest.fixture(scope="session")
def base_settings() -> Settings:
    settings = Settings()
    if not kafka_answers(settings, timeout=10):
        pytest.fail(f"no Kafka broker answers at {settings.bootstrap}: {START_HINT}")
    if not pg_answers(settings):
        pytest.fail(f"PostgreSQL does not answer: {START_HINT}")
    return settings


@dataclass
class Stack:
    """One test's isolated configuration, and the processes started for it."""

    settings: Settings
    env: dict[str, str]
    logs: Path
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    def start(self, command: str, ready: str | None = None, timeout: float = 240.0, label: str | None = None,
              **extra_env: str) -> subprocess.Popen:
        """Start ``phrasestream <command>`` with this stack's settings; wait for ``ready`` in its log.

        The process and its log (``<label>.log``) are known by ``label``, the command by default.
        """
        name = label or command
        log_path = self.logs / f"{name}.log"
        env = {**self.env, **extra_env}
        with open(log_path, "wb") as out:
            proc = subprocess.Popen([sys.executable, "-m", "streams.cli", command], env=env, stdout=out,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.procs[name] = proc
        if ready is not None:
            start = time.monotonic()
            while ready not in log_path.read_text(errors="replace"):
                if proc.poll() is not None:
                    pytest.fail(f"{name} exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
                if time.monotonic() - start > timeout:
                    pytest.fail(f"{name} not ready in {timeout}s:\n{log_path.read_text()[-3000:]}")
                time.sleep(0.5)
        return proc

    def stop(self, name: str) -> None:
        proc = self.procs.pop(name, None)
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)

    def produce(self, *values: bytes, topic: str | None = None) -> None:
        producer = Producer(client_config(self.settings))
        for value in values:
            producer.produce(topic or self.settings.topic_in, value=value)
        assert producer.flush(30) == 0

    def read(self, topic: str, count: int, timeout: float = 120.0) -> list[dict]:
        """Read ``count`` JSON messages from the start of ``topic`` (fewer if the time runs out)."""
        consumer = Consumer(client_config(self.settings, {"group.id": f"reader-{uuid.uuid4().hex}",
                                                          "auto.offset.reset": "earliest", "enable.auto.commit": False}))
        consumer.subscribe([topic])
        found: list[dict] = []
        start = time.monotonic()
        try:
            while len(found) < count and time.monotonic() - start < timeout:
                msg = consumer.poll(0.5)
                if msg is not None and msg.error() is None:
                    found.append(json.loads(msg.value()))
        finally:
            consumer.close()
        return found

    def rows(self) -> list[dict]:
        """Return every inference row of this test's schema, ordered by (id, model)."""
        query = sql.SQL("SELECT * FROM {}.inferences ORDER BY id, model").format(sql.Identifier(self.settings.pg_schema))
        with psycopg2.connect(self.settings.dsn) as conn, conn.cursor() as cur:
            cur.execute(query)
            names = [d[0] for d in cur.description]
            return [dict(zip(names, row)) for row in cur.fetchall()]

    def wait_sink_caught_up(self, timeout: float = 90.0) -> None:
        """Wait until the sink's group has committed every message of the predictions topic."""
        from confluent_kafka import TopicPartition

        topic = self.settings.topic_out
        probe = Consumer(client_config(self.settings, {"group.id": self.settings.sink_group,
                                                       "enable.auto.commit": False}))
        try:
            parts = [TopicPartition(topic, p) for p in probe.list_topics(topic, timeout=10).topics[topic].partitions]
            ends = {tp.partition: probe.get_watermark_offsets(tp, timeout=10)[1] for tp in parts}
            start = time.monotonic()
            while time.monotonic() - start < timeout:
                committed = {tp.partition: tp.offset for tp in probe.committed(parts, timeout=10)}
                if all(committed[p] >= end for p, end in ends.items() if end > 0):
                    return
                time.sleep(0.5)
        finally:
            probe.close()
        pytest.fail(f"the sink did not commit all of {topic} within {timeout}s")

    def wait_rows(self, count: int, timeout: float = 90.0) -> list[dict]:
        start = time.monotonic()
        rows = self.rows()
        while len(rows) < count and time.monotonic() - start < timeout:
            time.sleep(0.5)
            rows = self.rows()
        return rows


def make_stack(base_settings: Settings, tmp_path: Path, seed_registry: bool) -> Iterator[Stack]:
    """Build one test's stack; with ``seed_registry`` its registry topic names the suite's live heads."""
    suffix = uuid.uuid4().hex[:10]
    overrides = {
        "PHRASESTREAM_TOPIC_IN": f"test-{suffix}.phrases.in",
        "PHRASESTREAM_TOPIC_OUT": f"test-{suffix}.predictions.out",
        "PHRASESTREAM_TOPIC_DLQ": f"test-{suffix}.phrases.dlq",
        "PHRASESTREAM_TOPIC_LABELED": f"test-{suffix}.phrases.labeled",
        "PHRASESTREAM_TOPIC_REGISTRY": f"test-{suffix}.models.registry",
        "PHRASESTREAM_TOPIC_ALERTS": f"test-{suffix}.drift.alerts",
        "PHRASESTREAM_TOPIC_ROLLUPS": f"test-{suffix}.serving.rollups",
        "PHRASESTREAM_APP_ID": f"test-{suffix}",
        "PHRASESTREAM_SINK_GROUP": f"test-{suffix}-sink",
        "PHRASESTREAM_PG_SCHEMA": f"test_{suffix}",
        "PHRASESTREAM_HOME": str(Path(base_settings.home).resolve()),
        "PHRASESTREAM_EMBED_BATCH_WITHIN_MS": "20",
    }
    env = {**os.environ, **overrides}
    settings = Settings(**{k.removeprefix("PHRASESTREAM_").lower(): v for k, v in overrides.items()})
    create_topics(settings)
    apply_migrations(settings)
    if seed_registry:  # the suite's live heads (`make train`), as pointers; their files are in the shared models folder
        for pointer in read_all(base_settings).values():
            publish(settings, pointer)
    st = Stack(settings, env, tmp_path)
    try:
        yield st
    finally:
        for name in list(st.procs):
            st.stop(name)
        with psycopg2.connect(settings.dsn) as conn, conn.cursor() as cur:
            cur.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(settings.pg_schema)))


def linked_models_folder(base: Path, target: Path) -> Path:
    """A models folder of its own, with no head files; the suite's embedder export and feature
    cache are links (the embedder is rebuilt from its package anyway, and CLINC150 texts are not
    embedded twice)."""
    target.mkdir(parents=True)
    for name in ("embedder", "embcache"):
        (base / name).mkdir(parents=True, exist_ok=True)
        (target / name).symlink_to(base / name)
    return target


@pytest.fixture(scope="session")
def link_models():  # type: ignore[no-untyped-def]
    """:func:`linked_models_folder`, for tests that need a models folder of their own."""
    return linked_models_folder


@pytest.fixture
def stack(base_settings: Settings, tmp_path: Path) -> Iterator[Stack]:
    """A stack whose registry topic names the suite's live demo heads."""
    yield from make_stack(base_settings, tmp_path, seed_registry=True)


@pytest.fixture
def bare_stack(base_settings: Settings, tmp_path: Path) -> Iterator[Stack]:
    """A stack with an empty registry topic and empty bundle and history tables."""
    yield from make_stack(base_settings, tmp_path, seed_registry=False)
