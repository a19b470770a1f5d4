"""Store predictions in ``<schema>.inferences``: ``COPY`` into a staging table, then an idempotent insert.

:class:`PostgresSink` writes each batch in one transaction: ``COPY`` (CSV, every field quoted)
into a session-local temporary table, then ``INSERT ... SELECT ... ON CONFLICT (id, model,
model_version) DO NOTHING``, so a prediction delivered twice is stored once. It reconnects after
a broken connection and applies the migrations before its first one (``on_connect``).
:class:`streams.sinks.base.SinkRunner` does the rest (batches, retries, dead letters, commits);
docs/sink.md gives the measurements behind each choice.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Sequence

import psycopg2
import psycopg2.extensions
from psycopg2 import sql
from pydantic import ConfigDict, TypeAdapter

from schemas.messages import Prediction
from streams.sinks.base import ROW_ERRORS

COLUMNS = (
    "id", "region", "model", "model_version", "label", "probability", "top_k", "clean_text",
    "embedder_version", "cache_hit", "latency_ms", "received_at", "predicted_at",
)

STAGING_TABLE = "phrasestream_sink_staging"
"""The session's temporary table that ``COPY`` fills before the idempotent insert."""


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
    """Insert predictions into ``<schema>.inferences``, idempotently, reconnecting as needed.

    ``table``, ``columns`` and ``encode`` (a batch as ``COPY`` CSV in ``columns`` order) make it
    store another table keyed ``(id, model, model_version)``: the shadow predictions
    (``streams.sinks.shadow``).
    """

    def __init__(self, dsn: str, schema: str = "public", on_connect: Callable[[], object] | None = None, *,
                 table: str = "inferences", columns: Sequence[str] = COLUMNS,
                 encode: Callable[[Sequence[Prediction]], bytes] = copy_csv) -> None:
        self._dsn = dsn
        self._schema = schema
        self._on_connect = on_connect
        self._conn: psycopg2.extensions.connection | None = None
        self._encode = encode
        self._application = "phrasestream-sink" if table == "inferences" else f"phrasestream-sink-{table}"
        staging_name = STAGING_TABLE if table == "inferences" else f"{STAGING_TABLE}_{table}"
        names = sql.SQL(", ").join(map(sql.Identifier, columns))
        staging, target = sql.Identifier(staging_name), sql.Identifier(schema, table)
        # The staging table takes its column types from the real table, so it follows the migrations.
        self._create_staging = sql.SQL(
            "CREATE TEMPORARY TABLE IF NOT EXISTS {} ON COMMIT DELETE ROWS AS SELECT {} FROM {} WITH NO DATA"
        ).format(staging, names, target)
        self._copy = sql.SQL("COPY {} ({}) FROM STDIN WITH (FORMAT csv)").format(staging, names)
        self._insert = sql.SQL(
            "INSERT INTO {} ({}) SELECT {} FROM {} ON CONFLICT (id, model, model_version) DO NOTHING"
        ).format(target, names, names, staging)

    def _connection(self) -> psycopg2.extensions.connection:
        if self._conn is None or self._conn.closed:
            if self._on_connect is not None:  # apply migrations once, at the first connection
                self._on_connect()
                self._on_connect = None
            conn = psycopg2.connect(self._dsn, connect_timeout=5, application_name=self._application)
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
            return CopyBatch(batch, self._encode(batch))
        except ValueError:  # a row that cannot be encoded: write() raises it, as a row error
            return batch

    def write(self, batch: Sequence[Prediction]) -> int:
        """Insert the batch in one transaction; return the number of new rows."""
        if not batch:
            return 0
        # before the connection: a row that cannot be encoded is a row error
        data = batch.data if isinstance(batch, CopyBatch) else self._encode(batch)
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
