"""Bring up, inspect, stop and clean the services phrasestream needs: a Kafka broker and PostgreSQL.

Nothing here needs Docker or root. This module only orchestrates, in a stated order; each
service lives in its own module:

    ops/kafka/local.py      the local Kafka broker (or waiting for an external one)
    ops/kafka/topics.py           the project topics
    ops/postgres/local.py   the local PostgreSQL server (or waiting for an external one)
    ops/postgres/migrations.py       the SQL migrations
    ops/daemons.py          the worker and sink processes (``phrasestream start/stop/status``)

``up`` starts the broker first (topics need it), then PostgreSQL, then applies the migrations.
All their state lives under ``settings.home`` (``.local/``, see ``ops/paths.py``).

Command line (the Makefile runs the same through ``phrasestream up`` and ``phrasestream stop``)::

    python -m ops.services up        # start (or reuse) both, create topics, apply migrations
    python -m ops.services status    # exit status 0 when both answer
    python -m ops.services down      # stop what we started, by recorded pid only
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import sys
from pathlib import Path

from ops.kafka.clients import client_config
from ops.kafka.local import ensure_kafka, kafka_answers, kafka_process, stop_kafka
from ops.kafka.topics import create_topics, topic_specs
from ops.paths import Paths
from ops.postgres import area as pg_area
from ops.postgres.db import pg_answers, redacted_dsn
from ops.postgres.local import ensure_postgres, pg_os_user, pg_process, stop_postgres
from ops.postgres.migrations import apply_migrations
from ops.processes import ServiceError, locked, read_pid
from schemas.settings import Settings


def stop_all(settings: Settings) -> dict[str, bool]:
    """Stop the services this project started (by recorded pid); return name -> was stopped."""
    paths = Paths.of(settings)
    with locked(paths):
        return {"kafka": stop_kafka(paths), "postgres": stop_postgres(paths)}


def up(settings: Settings) -> None:
    """Start or reuse Kafka and PostgreSQL, create the topics and apply the migrations."""
    bootstrap = ensure_kafka(settings)
    kpid = read_pid(Paths.of(settings).kafka_pid) if settings.local_kafka else None
    print(f"kafka     up   {bootstrap}" + (f" (pid {kpid}, Kafka {settings.kafka_version})" if kpid else " (external)"))
    created = create_topics(settings)
    specs = topic_specs(settings)
    print("topics    ok   " + ", ".join(
        f"{n}[{specs[n][0]}]{'*' if c else ''}" for n, c in created.items())
          + ("   (* created now)" if any(created.values()) else ""))
    ensure_postgres(settings, report=lambda line: print(f"pgdata    {line}", flush=True))
    ppid = read_pid(Paths.of(settings).pg_pid) if settings.local_pg else None
    print(f"postgres  up   {redacted_dsn(settings.dsn)}" + (f" (pid {ppid})" if ppid else " (external)"))
    applied = apply_migrations(settings)
    print(f"migrate   ok   schema {settings.pg_schema}: "
          + (f"applied {', '.join(f'{v:03d}' for v in applied)}" if applied else "up to date"))


def status(settings: Settings) -> dict[str, bool]:
    """Print one line per service; return name -> answers."""
    paths = Paths.of(settings)
    k_ok = kafka_answers(settings, timeout=3)
    kproc = kafka_process(paths) if settings.local_kafka else None
    where = "external" if not settings.local_kafka else (f"pid {kproc.pid}" if kproc else "no pid recorded")
    line = f"kafka     {'up  ' if k_ok else 'DOWN'} {settings.bootstrap} ({where})"
    if k_ok:
        from confluent_kafka.admin import AdminClient

        topics = AdminClient(client_config(settings)).list_topics(timeout=5).topics
        line += "  topics: " + ", ".join(
            f"{n}[{len(topics[n].partitions)}]" if n in topics else f"{n}[missing]" for n in topic_specs(settings))
    print(line)
    p_ok = pg_answers(settings)
    pproc = pg_process(paths) if settings.local_pg else None
    where = "external" if not settings.local_pg else (f"pid {pproc.pid}" if pproc else "no pid recorded")
    print(f"postgres  {'up  ' if p_ok else 'DOWN'} {redacted_dsn(settings.dsn)} ({where})")
    if settings.local_pg:
        print(f"pgdata    {paths.pg_data}" + ("" if paths.pg_data.exists() else " (not initialised)"))
    return {"kafka": k_ok, "postgres": p_ok}


HOME_STATE = ("run", "logs", "kafka", "pg")
HOME_ALL = (*HOME_STATE, "models", "bench", "reports")


def clean(settings: Settings, everything: bool = False) -> list[Path]:
    """Stop our services and delete what phrasestream created for them; return what was deleted.

    Deleted: the local broker's data, the local PostgreSQL's data (its server area too, when
    it has one), logs and pid files. Kept unless ``everything``: ``<home>/models`` (embedder
    export and trained heads) and the cached Kafka jars. Only folders phrasestream makes are
    touched, never ``<home>`` as a whole, and a server area only when it is the one this
    project's home names and it is owned as phrasestream makes it.
    """
    paths = Paths.of(settings)
    stop_all(settings)
    removed: list[Path] = []
    if settings.local_pg and paths.pg_separate and paths.pg_server.is_dir() and not paths.pg_server.is_symlink():
        ids = pg_os_user() or (os.geteuid(), os.getegid())
        try:
            pg_area.ensure_area(paths.pg_server, *ids)  # refuses a folder that is not ours
        except pg_area.AreaError as exc:
            raise ServiceError(f"not deleting {paths.pg_server}: {exc}") from None
        shutil.rmtree(paths.pg_server)
        removed.append(paths.pg_server)
    keep_jars = not everything
    for name in HOME_ALL if everything else HOME_STATE:
        target = paths.home / name
        if not target.exists() or target.is_symlink():
            continue
        if name == "kafka" and keep_jars:
            for child in target.iterdir():
                if child.name == "libs":
                    continue
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                else:
                    child.unlink()
                removed.append(child)
            continue
        shutil.rmtree(target)
        removed.append(target)
    with contextlib.suppress(OSError):
        paths.home.rmdir()  # only when nothing else is left in it
    return removed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ops.services", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["up", "down", "status", "topics", "migrate", "clean"])
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    settings = Settings()
    from ops.logs import configure_logging

    configure_logging(settings, level=logging.INFO if args.verbose else logging.WARNING)
    try:
        if args.command == "up":
            up(settings)
        elif args.command == "down":
            stopped = stop_all(settings)
            for name, was in stopped.items():
                print(f"{name:<9} {'stopped' if was else 'was not running (nothing recorded)'}")
        elif args.command == "status":
            return 0 if all(status(settings).values()) else 3
        elif args.command == "topics":
            ensure_kafka(settings)
            print(create_topics(settings))
        elif args.command == "migrate":
            print(apply_migrations(settings))
        elif args.command == "clean":
            for path in clean(settings):
                print(f"removed   {path}")
    except ServiceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
