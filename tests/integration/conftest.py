"""Fixtures for tests against the live Kafka broker and PostgreSQL that `make test` starts.

Each test gets its own topics, Faust app id, sink consumer group and database schema
(uuid-suffixed), so tests never see each other's messages. Workers and sinks run as real
``phrasestream`` processes with that configuration in their environment.

A test waits for signals, never for a guessed time: a process's ready line (:meth:`Stack.start`),
a line in its log (:meth:`Stack.wait_log`), messages on a topic (:meth:`Stack.read`), a group's
committed offsets reaching a topic's end (:meth:`Stack.wait_caught_up`), a row count
(:meth:`Stack.wait_rows`). Each wait returns as soon as its signal is there; its bound
(``bounds.py``) only turns a hang into a failure.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg2
import pytest
from bounds import BOUND_S, POLL_S, READY_BOUND_S
from confluent_kafka import Consumer, Producer
from psycopg2 import sql

from models.registry.pointers import publish, read_all
from ops.daemons import READY_LINE
from ops.kafka.clients import client_config
from ops.kafka.local import kafka_answers
from ops.kafka.offsets import caught_up
from ops.kafka.produce import produce_retrying
from ops.kafka.topics import create_topics
from ops.postgres.db import pg_answers
from ops.postgres.migrations import apply_migrations
from ops.processes import end_child
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

    def start(self, command: str, ready: str | None = None, timeout: float = READY_BOUND_S, label: str | None = None,
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
            self.wait_log(name, ready, timeout)
        return proc

    def wait_log(self, name: str, line: str, timeout: float = BOUND_S) -> str:
        """Wait until the log of process ``name`` holds ``line``; return the log. Fail if the process exits first."""
        log_path = self.logs / f"{name}.log"
        proc = self.procs[name]
        start = time.monotonic()
        while line not in (text := log_path.read_text(errors="replace")):
            if proc.poll() is not None:
                pytest.fail(f"{name} exited with {proc.returncode} before logging {line!r}:\n{text[-3000:]}")
            if time.monotonic() - start > timeout:
                pytest.fail(f"{name} did not log {line!r} in {timeout:.0f} s:\n{text[-3000:]}")
            time.sleep(POLL_S)
        return text

    def tails(self, lines: int = 40) -> str:
        """Return the last lines of every log of this stack (for a failure's message)."""
        return "\n".join(f"--- {path.name}:\n" + "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
                         for path in sorted(self.logs.glob("*.log")))

    def stop(self, name: str, timeout: float = BOUND_S) -> None:
        """Stop process ``name`` as an operator would (SIGTERM) and wait for it; SIGKILL only if it hangs."""
        proc = self.procs.pop(name, None)
        if proc is not None:
            end_child(proc, timeout)

    def produce(self, *values: bytes, topic: str | None = None) -> None:
        producer = Producer(client_config(self.settings))
        for value in values:
            produce_retrying(producer, topic or self.settings.topic_in, value)
        assert producer.flush(BOUND_S) == 0

    def read(self, topic: str, count: int = 0, timeout: float = BOUND_S,
             until: Callable[[list[dict]], bool] | None = None) -> list[dict]:
        """Read JSON messages from the start of ``topic`` until there are ``count`` (or ``until(found)`` holds).

        Fewer if the bound is reached.
        """
        consumer = Consumer(client_config(self.settings, {"group.id": f"reader-{uuid.uuid4().hex}",
                                                          "auto.offset.reset": "earliest", "enable.auto.commit": False}))
        consumer.subscribe([topic])
        found: list[dict] = []
        done = until or (lambda got: len(got) >= count)
        start = time.monotonic()
        try:
            while not done(found) and time.monotonic() - start < timeout:
                msg = consumer.poll(POLL_S)
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

    def wait_caught_up(self, group: str, topic: str, timeout: float = BOUND_S) -> None:
        """Wait until ``group`` has committed the end of every partition of ``topic`` (its current end, asked anew)."""
        config = client_config(self.settings)
        start = time.monotonic()
        while not caught_up(config, group, topic):
            if time.monotonic() - start > timeout:
                pytest.fail(f"group {group} did not commit all of {topic} within {timeout:.0f} s")
            time.sleep(POLL_S)

    def wait_sink_caught_up(self, timeout: float = BOUND_S) -> None:
        """Wait until the sink's group has committed every message of the predictions topic (so they are stored)."""
        self.wait_caught_up(self.settings.sink_group, self.settings.topic_out, timeout)

    def wait_worker_caught_up(self, timeout: float = BOUND_S) -> None:
        """Wait until the worker's group has committed every phrase in and every cleaned one.

        A worker commits a batch once the broker has its outputs, so from then on every
        prediction and dead letter of what was produced before is on its topic.
        """
        app_id = self.settings.app_id
        for topic in (self.settings.topic_in, f"{app_id}-phrases.cleaned"):
            self.wait_caught_up(app_id, topic, timeout)

    def wait_rows(self, count: int, timeout: float = BOUND_S, ids: set[str] | None = None) -> list[dict]:
        """Return the rows (of ``ids`` only, when given) once there are ``count`` (or more); fewer if
        the bound is reached."""
        def wanted() -> list[dict]:
            return [r for r in self.rows() if ids is None or r["id"] in ids]

        start = time.monotonic()
        rows = wanted()
        while len(rows) < count and time.monotonic() - start < timeout:
            time.sleep(POLL_S)
            rows = wanted()
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
        "PHRASESTREAM_TOPIC_REVIEW": f"test-{suffix}.phrases.review",
        "PHRASESTREAM_TOPIC_SHADOW": f"test-{suffix}.predictions.shadow",
        "PHRASESTREAM_APP_ID": f"test-{suffix}",
        "PHRASESTREAM_SINK_GROUP": f"test-{suffix}-sink",
        "PHRASESTREAM_PG_SCHEMA": f"test_{suffix}",
        "PHRASESTREAM_HOME": str(Path(base_settings.home).resolve()),
        # each test's worker serves a few phrases: the graphs they use compile when first used
        # instead of all at start (saves ~4 s of CPU per worker; the daemon tests keep the default)
        "PHRASESTREAM_EMBED_WARMUP": "false",
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


@pytest.fixture(scope="module")
def module_stack(base_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One stack (registry seeded, as :func:`stack`) shared by the tests of one module; the
    module's fixtures start its processes. At the end it stops them and drops the schema."""
    yield from make_stack(base_settings, tmp_path_factory.mktemp("module"), seed_registry=True)


@pytest.fixture(scope="module")
def live(module_stack: Stack) -> Stack:
    """One stack with a worker and a sink running, shared by the tests of one module that only
    send phrases and read back their own answers (each by its own ids and texts): a worker's
    start is most of such a test's cost."""
    module_stack.start("worker", READY_LINE)
    module_stack.start("sink", "sink started")
    return module_stack
