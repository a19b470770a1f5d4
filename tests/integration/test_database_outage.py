"""A database outage never stops predictions, and the sink catches up when it is back."""

from __future__ import annotations

import json
import socket
import threading

import pytest
from fakes import prediction  # a prediction as a worker publishes it (the sink's tests need no worker)
from psycopg2.extensions import make_dsn

from streams.app import READY_LINE

pytestmark = pytest.mark.integration


class TcpGate:
    """A TCP forwarder to PostgreSQL on 127.0.0.1 that can be opened late: 'the database is down'."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()
        self._server: socket.socket | None = None
        self._stop = threading.Event()

    def open(self) -> None:
        server = socket.socket()
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", self.port))
        server.listen(16)
        server.settimeout(0.5)
        self._server = server
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        assert self._server is not None
        while not self._stop.is_set():
            try:
                client, _ = self._server.accept()
            except (TimeoutError, OSError):
                continue
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while chunk := src.recv(65536):
                dst.sendall(chunk)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self._stop.set()
        if self._server is not None:
            self._server.close()


def test_predictions_flow_while_the_database_is_down_and_rows_arrive_when_it_is_back(stack):
    gate = TcpGate(stack.settings.pg_port)
    try:
        dsn = make_dsn(stack.settings.dsn, port=gate.port)  # the same server, behind the gate
        stack.start("worker", READY_LINE)
        stack.start("sink", "sink started", PHRASESTREAM_PG_DSN=dsn)
        phrases = [{"id": f"outage-{i}", "text": t, "region": "global", "models": ["intent"]}
                   for i, t in enumerate(["what's my balance", "play some jazz", "book a flight to paris"])]
        stack.produce(*(json.dumps(p).encode() for p in phrases))

        predictions = stack.read(stack.settings.topic_out, len(phrases))
        assert sorted(p["id"] for p in predictions) == sorted(p["id"] for p in phrases)
        stack.wait_log("sink", "database write failed")  # it read the batch and retries against a closed port
        assert stack.rows() == []

        gate.open()
        rows = stack.wait_rows(len(phrases))
        assert sorted(r["id"] for r in rows) == sorted(p["id"] for p in phrases)
        assert stack.procs["sink"].poll() is None
    finally:
        gate.close()


def test_the_sink_applies_the_migrations_to_a_new_schema_before_writing(stack):
    import uuid

    import psycopg2
    from psycopg2 import sql

    schema = f"fresh_{uuid.uuid4().hex[:8]}"
    stack.produce(prediction("fresh-1", "alarm"), prediction("fresh-2", "balance"), topic=stack.settings.topic_out)
    stack.start("sink", "sink started", PHRASESTREAM_PG_SCHEMA=schema)
    query = sql.SQL("SELECT id FROM {}.inferences ORDER BY id").format(sql.Identifier(schema))
    try:
        stack.wait_sink_caught_up()  # every prediction stored (in the new schema) and committed
        with psycopg2.connect(stack.settings.dsn) as conn, conn.cursor() as cur:
            cur.execute(query)
            assert [r[0] for r in cur.fetchall()] == ["fresh-1", "fresh-2"]
    finally:
        stack.stop("sink")
        with psycopg2.connect(stack.settings.dsn) as conn, conn.cursor() as cur:
            cur.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


def test_a_prediction_postgres_refuses_is_dead_lettered_and_the_rest_of_its_batch_stored(stack):
    stack.produce(prediction("good", "balance"), prediction("poison", "nul\x00label"), topic=stack.settings.topic_out)
    stack.start("sink", "sink started")
    stack.wait_sink_caught_up()
    assert [r["id"] for r in stack.rows()] == ["good"]
    [letter] = stack.read(stack.settings.topic_dlq, 1)
    assert letter["error_kind"] == "rejected_by_database"
    assert letter["id"] == "poison"
    assert stack.procs["sink"].poll() is None
