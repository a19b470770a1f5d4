"""Every runtime path under ``settings.home``: the layout of ``.local/``::

    .local/kafka/libs/           broker jars (+ .kafka-version marker)
    .local/kafka/server.properties, log4j2.properties, cluster.id
    .local/kafka/scram-password  password of the SASL/SCRAM user phrasestream (mode 0600; ops/kafka/security.py)
    .local/kafka/data/           log.dirs (topics and KRaft metadata)
    .local/pg/data/              PostgreSQL data directory (as root: a server area, see ops.postgres.area)
    .local/pg/password           password of the PostgreSQL role phrasestream (mode 0600)
    .local/logs/kafka.log, postgres.log
    .local/logs/<app_id>/sink.log, worker-1.log, ...   the daemons (ops.daemons)
    .local/run/kafka.pid, postgres.pid, services.lock
    .local/run/<app_id>/sink.pid, worker-1.pid, ...
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from ops.postgres import area as pg_area
from schemas.settings import Settings


@dataclass(frozen=True)
class Paths:
    """Every runtime path under ``settings.home``, and where the PostgreSQL server's files live.

    ``server_dir`` is ``PHRASESTREAM_PG_SERVER_DIR``: where the embedded PostgreSQL keeps its
    data, binaries and log. Empty: ``<home>/pg`` when the server runs as the caller, and a
    server area of its own (``ops.postgres.area``) when it must run as another user (we are root).
    """

    home: Path
    server_dir: Path | None = None

    @classmethod
    def of(cls, settings: Settings) -> Paths:
        override = Path(settings.pg_server_dir).expanduser().resolve() if settings.pg_server_dir else None
        return cls(Path(settings.home).expanduser().resolve(), override)

    @property
    def run(self) -> Path:
        return self.home / "run"

    @property
    def logs(self) -> Path:
        return self.home / "logs"

    @property
    def kafka(self) -> Path:
        return self.home / "kafka"

    @property
    def kafka_libs(self) -> Path:
        return self.kafka / "libs"

    @property
    def kafka_data(self) -> Path:
        return self.kafka / "data"

    @property
    def kafka_config(self) -> Path:
        return self.kafka / "server.properties"

    @property
    def kafka_log4j(self) -> Path:
        return self.kafka / "log4j2.properties"

    @property
    def kafka_cluster_id(self) -> Path:
        return self.kafka / "cluster.id"

    @property
    def kafka_log(self) -> Path:
        return self.logs / "kafka.log"

    @property
    def kafka_pid(self) -> Path:
        return self.run / "kafka.pid"

    @property
    def pg_home(self) -> Path:
        """The project's PostgreSQL folder: the password and the location record live here."""
        return self.home / "pg"

    @property
    def pg_legacy_in_place(self) -> bool:
        """Say whether a data directory made before server areas existed sits in ``<home>/pg``."""
        return self.server_dir is None and (self.pg_home / "data" / "PG_VERSION").is_file()

    @property
    def pg_separate(self) -> bool:
        """Say whether the server's files live apart from the project (in a server area)."""
        if self.server_dir is not None:
            return True
        return os.geteuid() == 0 and not self.pg_legacy_in_place

    @property
    def pg_server(self) -> Path:
        """The folder that holds the server's data directory (and, when apart, binaries and log)."""
        if self.server_dir is not None:
            return self.server_dir
        return pg_area.default_area(self.home) if self.pg_separate else self.pg_home

    @property
    def pg_data(self) -> Path:
        return self.pg_server / "data"

    @property
    def pg_hba(self) -> Path:
        return self.pg_data / "pg_hba.conf"

    @property
    def pg_password(self) -> Path:
        """The password of the role ``phrasestream`` (same file as ``Settings.pg_password_file``)."""
        return self.pg_home / "password"

    @property
    def pg_record(self) -> Path:
        """Where the data lives and when it was initialised (``ops.postgres.area.write_record``)."""
        return self.pg_home / pg_area.RECORD_NAME

    @property
    def pg_log(self) -> Path:
        return self.pg_server / "postgres.log" if self.pg_separate else self.logs / "postgres.log"

    @property
    def pg_pid(self) -> Path:
        return self.run / "postgres.pid"

    @property
    def lock(self) -> Path:
        return self.run / "services.lock"

    def make_dirs(self) -> None:
        for d in (self.run, self.logs, self.kafka, self.pg_home):
            d.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0 and self.pg_legacy_in_place:
            # A data directory made in <home>/pg before server areas: PostgreSQL (another user)
            # must traverse home, home/pg and home/logs, whatever root's umask made them.
            for d in (self.home, self.pg_home, self.logs):
                mode = stat.S_IMODE(d.stat().st_mode)
                if mode & 0o001 == 0:
                    d.chmod(mode | 0o001)
