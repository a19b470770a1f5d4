"""Connect to the configured PostgreSQL (ours or an external one), and describe it without secrets."""

from __future__ import annotations

from typing import Any

from schemas.settings import Settings


def pg_connect(settings: Settings, dbname: str | None = None, timeout: int = 5):
    """Open a psycopg2 connection to the configured PostgreSQL (optionally another database)."""
    import psycopg2

    kwargs: dict[str, Any] = {"connect_timeout": timeout}
    if dbname:
        kwargs["dbname"] = dbname
    return psycopg2.connect(settings.dsn, **kwargs)


def pg_answers(settings: Settings, dbname: str | None = None) -> bool:
    """Say whether PostgreSQL accepts a connection now (3 s at most)."""
    import psycopg2

    try:
        pg_connect(settings, dbname=dbname, timeout=3).close()
        return True
    except psycopg2.Error:
        return False


def redacted_dsn(dsn: str) -> str:
    """Describe a DSN without its password."""
    try:
        from psycopg2.extensions import parse_dsn

        p = parse_dsn(dsn)
    except Exception:  # noqa: BLE001 - a malformed DSN must still not be printed
        return "postgresql://<unparsable dsn>"
    user = p.get("user", "")
    host = p.get("host", "")
    port = p.get("port", "")
    db = p.get("dbname", "")
    return f"postgresql://{user}{'@' if user else ''}{host}{':' + port if port else ''}/{db}"
