"""The SQL migrations in ``ops/postgres/sql/``: list them and apply the pending ones.

The sink imports this module on its own: it needs PostgreSQL's client, not the server's set-up.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from ops.postgres.db import pg_connect
from ops.processes import ServiceError
from schemas.settings import Settings

log = logging.getLogger("phrasestream.ops")

MIGRATIONS_DIR = Path(__file__).resolve().parent / "sql"
MIGRATION_RE = re.compile(r"^(\d{3})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    path: Path

    @property
    def sql(self) -> str:
        return self.path.read_text(encoding="utf-8")

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.path.read_bytes()).hexdigest()


def list_migrations(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """Return the migrations in ``directory`` ordered by version; reject bad names and duplicates."""
    found: dict[int, Migration] = {}
    for path in sorted(directory.glob("*.sql")):
        m = MIGRATION_RE.match(path.name)
        if not m:
            raise ServiceError(f"migration file name {path.name!r} is not NNN_lower_snake.sql")
        version = int(m.group(1))
        if version in found:
            raise ServiceError(f"two migrations share version {version}: {found[version].path.name}, {path.name}")
        found[version] = Migration(version, m.group(2), path)
    return [found[v] for v in sorted(found)]


def apply_migrations(settings: Settings, directory: Path = MIGRATIONS_DIR) -> list[int]:
    """Apply pending migrations in ``settings.pg_schema``; return the versions applied now.

    Each migration runs in its own transaction with ``search_path`` set to the schema, and is
    recorded in ``<schema>.schema_migrations``. An advisory lock serialises concurrent runs.
    A migration whose file changed after it was applied is an error.
    """
    from psycopg2 import sql

    schema = sql.Identifier(settings.pg_schema)
    migrations = list_migrations(directory)
    applied_now: list[int] = []
    conn = pg_connect(settings)
    try:
        with conn:
            with conn.cursor() as cur:
                cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", ("phrasestream-migrations:" + settings.pg_schema,))
                cur.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(schema))
                cur.execute(sql.SQL(
                    "CREATE TABLE IF NOT EXISTS {}.schema_migrations ("
                    " version integer PRIMARY KEY,"
                    " name text NOT NULL,"
                    " checksum text NOT NULL,"
                    " applied_at timestamptz NOT NULL DEFAULT now())").format(schema))
        for mig in migrations:
            with conn, conn.cursor() as cur:
                cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))",
                            ("phrasestream-migrations:" + settings.pg_schema,))
                cur.execute(sql.SQL("SELECT checksum FROM {}.schema_migrations WHERE version = %s")
                            .format(schema), (mig.version,))
                row = cur.fetchone()
                if row is not None:
                    if row[0] != mig.checksum:
                        raise ServiceError(f"migration {mig.path.name} changed after it was applied in "
                                           f"schema {settings.pg_schema}; add a new migration instead")
                    continue
                cur.execute(sql.SQL("SET LOCAL search_path TO {}").format(schema))
                cur.execute(mig.sql)
                cur.execute(sql.SQL("INSERT INTO {}.schema_migrations (version, name, checksum) "
                                    "VALUES (%s, %s, %s)").format(schema),
                            (mig.version, mig.name, mig.checksum))
                applied_now.append(mig.version)
                log.info("applied migration %s in schema %s", mig.path.name, settings.pg_schema)
    finally:
        conn.close()
    return applied_now
