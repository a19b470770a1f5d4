"""Store the workers' serving rollups in ``<schema>.serving_rollups``, each delta once.

The workers publish per-head, per-hour sums to ``serving.rollups`` (``streams.rollups``); the
sink process stores each delta with :class:`PostgresRollupSink` under its own
:class:`streams.sinks.base.SinkRunner` (``streams.sinks.run.rollup_runner``). A drift report
sums the rows of a window.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import psycopg2
import psycopg2.extensions
from psycopg2 import sql
from psycopg2.extras import execute_values

from schemas.observations import ServingRollup

ROLLUP_COLUMNS = ("delta_id", "region", "model", "model_version", "hour", "n", "embedding_sum", "unk_rate_sum",
                  "with_unk")


class PostgresRollupSink:
    """Insert serving-rollup deltas into ``<schema>.serving_rollups``, each ``delta_id`` once.

    The sink process runs it under its own ``SinkRunner`` (retry, rewind, commit after store,
    dead letters). Deltas are few (a handful per head every 10 s), so ``execute_values`` in one
    statement per batch is enough; the inferences keep their ``COPY`` path.
    """

    def __init__(self, dsn: str, schema: str = "public", on_connect: Callable[[], object] | None = None) -> None:
        self._dsn = dsn
        self._on_connect = on_connect
        self._conn: psycopg2.extensions.connection | None = None
        self._insert = sql.SQL("INSERT INTO {} ({}) VALUES %s ON CONFLICT (delta_id) DO NOTHING").format(
            sql.Identifier(schema, "serving_rollups"), sql.SQL(", ").join(map(sql.Identifier, ROLLUP_COLUMNS)))

    def _connection(self) -> psycopg2.extensions.connection:
        if self._conn is None or self._conn.closed:
            if self._on_connect is not None:  # apply migrations once, at the first connection
                self._on_connect()
                self._on_connect = None
            self._conn = psycopg2.connect(self._dsn, connect_timeout=5, application_name="phrasestream-sink-rollups")
        return self._conn

    def prepare(self, batch: Sequence[ServingRollup]) -> Sequence[ServingRollup]:
        return batch

    def write(self, batch: Sequence[ServingRollup]) -> int:
        """Insert the batch in one transaction; return the number of new rows."""
        if not batch:
            return 0
        rows = [(d.delta_id, d.region, d.model, d.model_version, d.hour, d.n, d.embedding_sum, d.unk_rate_sum,
                 d.with_unk) for d in batch]
        conn = self._connection()
        try:
            with conn, conn.cursor() as cur:
                # one statement for the whole batch, so rowcount counts every new row
                execute_values(cur, self._insert.as_string(conn), rows, page_size=len(rows))
                return cur.rowcount
        except psycopg2.Error as exc:
            if not isinstance(exc, (psycopg2.DataError, psycopg2.IntegrityError)):
                conn.close()  # the connection may be broken: open a new one next time
            raise

    def close(self) -> None:
        if self._conn is not None and not self._conn.closed:
            self._conn.close()
