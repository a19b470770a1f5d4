"""The local Kafka broker: fetch its jars, write its config, format its storage, start and stop it.

With no ``PHRASESTREAM_KAFKA_BOOTSTRAP`` the project runs its own single-node broker (KRaft
mode, jars fetched from Maven Central by ``ops/kafka/pom.xml``); its state lives under
``<home>/kafka`` (see ``ops.paths``). With a bootstrap set, ``ensure_kafka`` only waits for it.
"""

from __future__ import annotations

import base64
import logging
import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import psutil

from ops.kafka import security as kafka_security
from ops.kafka.clients import client_config
from ops.paths import Paths
from ops.processes import EXTERNAL_WAIT_S, ServiceError, locked, our_process, port_open, tail, terminate, wait_until
from schemas.settings import Settings

log = logging.getLogger("phrasestream.ops")

POM = Path(__file__).resolve().parent / "pom.xml"
KAFKA_START_TIMEOUT_S = 90.0
KAFKA_STOP_TIMEOUT_S = 30.0
MAVEN_TIMEOUT_S = 900.0
KAFKA_FORMAT_TIMEOUT_S = 120.0


def _text(out: str | bytes | None) -> str:
    """Return captured subprocess output as text (TimeoutExpired may hold bytes or None)."""
    if out is None:
        return ""
    return out.decode(errors="replace") if isinstance(out, bytes) else out


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
        # PLAINTEXT on kafka_port, SASL_PLAINTEXT (SCRAM) on kafka_sasl_port: see ops.kafka.security
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
    text = "# written by ops/kafka/local.py; edits are overwritten on the next start\n"
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
    # The serial collector: one local broker with a heap of at most 1 GB on a few cores. G1 (the
    # JVM's default on 2+ cores) adds concurrent marking and refinement threads, CPU that the
    # workers beside it on the same machine need more (a sixth of the CPU of a local broker that
    # had served this project's tests and benchmarks for hours).
    return [
        _java(), heap, "-XX:+UseSerialGC", "-XX:+ExitOnOutOfMemoryError", "-Djava.awt.headless=true",
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
    config: dict[str, Any] = client_config(target) if isinstance(target, Settings) else {"bootstrap.servers": target}
    bootstrap = config["bootstrap.servers"]
    first = bootstrap.split(",")[0].strip()
    host, _, port = first.rpartition(":")
    if host and port.isdigit() and not port_open(host.strip("[]"), int(port), timeout=min(timeout, 1.0)):
        return False
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    quiet = logging.getLogger("phrasestream.ops.librdkafka")
    quiet.setLevel(logging.CRITICAL)
    options: dict[str, Any] = {**config, "logger": quiet}  # confluent's stubs omit "logger"
    admin = AdminClient(options)
    try:
        md = admin.list_topics(timeout=timeout)
        return bool(md.brokers)
    except KafkaException:
        return False


def _wait_kafka(target: Settings | str, timeout: float, proc: subprocess.Popen | None = None,
                log_path: Path | None = None) -> None:
    """Wait up to ``timeout`` s for the broker at ``bootstrap`` to answer; fail early if ``proc`` exits."""
    def answers() -> bool:
        if proc is not None and proc.poll() is not None:
            raise ServiceError(
                f"the Kafka broker exited with status {proc.returncode}; last lines of {log_path}:\n"
                + (tail(log_path) if log_path else ""))
        return kafka_answers(target, timeout=3.0)

    if not wait_until(answers, timeout, 0.5):
        where = f"; last lines of {log_path}:\n{tail(log_path)}" if log_path else ""
        bootstrap = target.bootstrap if isinstance(target, Settings) else target
        raise ServiceError(f"Kafka at {bootstrap} did not answer in time{where}")


def kafka_process(paths: Paths) -> psutil.Process | None:
    return our_process(paths.kafka_pid, "kafka.Kafka", str(paths.kafka_config))


def ensure_kafka(settings: Settings) -> str:
    """Return the bootstrap servers of a Kafka broker that answers, starting ours if needed."""
    if not settings.local_kafka:
        _wait_kafka(settings, EXTERNAL_WAIT_S)
        return settings.bootstrap
    paths = Paths.of(settings)
    plain = f"127.0.0.1:{settings.kafka_port}"  # the local broker's PLAINTEXT listener: no login needed
    with locked(paths):
        running = kafka_process(paths)
        if running is not None:
            _wait_kafka(plain, KAFKA_START_TIMEOUT_S, log_path=paths.kafka_log)
            kafka_security.ensure_scram_user(settings)
            if not port_open("127.0.0.1", settings.kafka_sasl_port):
                log.warning("the running broker has no SASL listener on port %d (started by an older version); "
                            "`phrasestream stop` and `up` to add it", settings.kafka_sasl_port)
            log.info("reusing the Kafka broker (pid %d) at %s", running.pid, settings.bootstrap)
            return settings.bootstrap
        for port in (settings.kafka_port, settings.kafka_sasl_port, settings.kafka_controller_port):
            if port_open("127.0.0.1", port):
                raise ServiceError(
                    f"port {port} is taken by a process that {paths.kafka_pid} does not record; stop it, "
                    "or set PHRASESTREAM_KAFKA_PORT/PHRASESTREAM_KAFKA_SASL_PORT/PHRASESTREAM_KAFKA_CONTROLLER_PORT, "
                    "or point PHRASESTREAM_KAFKA_BOOTSTRAP at it")
        fetch_kafka_jars(settings)
        _write_kafka_config(settings, paths)
        _format_kafka_storage(settings, paths)
        # 1 GB: a broker's heap holds the metadata of every partition it has. At 512 MB, a dev broker
        # with some 11,000 partitions (a day of test and bench topics) was in back-to-back full
        # collections of 0.7 s each, stopping every client's requests: the p99 of light traffic.
        cmd = _java_cmd(paths, "kafka.Kafka", str(paths.kafka_config), heap="-Xmx1g")
        cmd.insert(2, "-Xms128m")
        with open(paths.kafka_log, "ab") as out:
            out.write(f"\n==== starting Kafka {settings.kafka_version} at {time.ctime()} ====\n".encode())
            out.flush()
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    cwd=paths.kafka, start_new_session=True, close_fds=True)
        paths.kafka_pid.write_text(f"{proc.pid}\n")
        log.info("started Kafka %s (pid %d), waiting for %s", settings.kafka_version, proc.pid, settings.bootstrap)
        try:
            _wait_kafka(plain, KAFKA_START_TIMEOUT_S, proc, paths.kafka_log)
        except ServiceError:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
            paths.kafka_pid.unlink(missing_ok=True)
            raise
        kafka_security.ensure_scram_user(settings)
        return settings.bootstrap


def stop_kafka(paths: Paths) -> bool:
    """Stop our broker (by recorded pid); return False when none of ours ran."""
    proc = kafka_process(paths)
    if proc is None:
        paths.kafka_pid.unlink(missing_ok=True)
        return False
    log.info("stopping Kafka (pid %d)", proc.pid)
    terminate(proc, "Kafka", KAFKA_STOP_TIMEOUT_S)
    paths.kafka_pid.unlink(missing_ok=True)
    return True
