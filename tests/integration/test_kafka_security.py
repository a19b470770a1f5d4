"""Kafka security on the local broker: a stream over SASL/SCRAM, a refused login, no auto-created
topics, and no password in any log.

The broker that ``phrasestream up`` starts has a SASL_PLAINTEXT listener (SCRAM-SHA-512) on
``PHRASESTREAM_KAFKA_SASL_PORT`` beside its PLAINTEXT one; its user's password is generated into
``<home>/kafka/scram-password`` (see ``ops/kafka/security.py``).
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from bounds import BOUND_S
from confluent_kafka import KafkaError, Producer
from confluent_kafka.admin import AdminClient, ConfigResource
from psycopg2.extensions import parse_dsn
from pydantic import SecretStr

from models.registry.lifecycle import active_heads
from ops.kafka.clients import KafkaAuthError, check_access, client_config
from ops.kafka.local import kafka_answers
from schemas.settings import Settings
from streams.app import READY_LINE

pytestmark = pytest.mark.integration

SINK_READY = "sink started"
WRONG_PASSWORD = f"wrong-{uuid.uuid4().hex}"
PHRASES = [("s1", "how do I reset my PIN?"), ("s2", "what is my balance"), ("s3", "book a table for two")]


@pytest.fixture(scope="module")
def sasl(base_settings: Settings) -> Settings:
    """The base settings, with every client on the local broker's SASL listener."""
    if not base_settings.local_kafka:
        pytest.skip("tests the local broker's SASL listener; PHRASESTREAM_KAFKA_BOOTSTRAP points elsewhere")
    settings = base_settings.model_copy(update={"kafka_security_protocol": "SASL_PLAINTEXT"})
    if not settings.kafka_password or not kafka_answers(settings, timeout=10):
        pytest.fail(f"the local broker has no SASL listener on port {settings.kafka_sasl_port} (or no "
                    f"{settings.kafka_password_file}): it was started by an older version; restart it "
                    "with `phrasestream stop` and `phrasestream up`")
    return settings


def _over_sasl(stack: Any) -> Any:
    """The same stack (topics, group, schema, processes) whose own clients log in over SASL."""
    return dataclasses.replace(stack, settings=stack.settings.model_copy(
        update={"kafka_security_protocol": "SASL_PLAINTEXT"}), procs=stack.procs)


def _serve_over_sasl(stack: Any, sasl: Settings, **extra_env: str) -> tuple[list[str], list[dict], list[dict]]:
    """Start a worker and a sink that reach Kafka only through the SASL listener; serve PHRASES."""
    heads = active_heads(stack.settings)["global"]
    # the worker: the local-broker shorthand (protocol only; port and password from the home);
    # its PLAINTEXT port is a dead one, so nothing can slip through without a login
    stack.start("worker", READY_LINE, PHRASESTREAM_KAFKA_SECURITY_PROTOCOL="SASL_PLAINTEXT",
                PHRASESTREAM_KAFKA_PORT="1", **extra_env)
    # the sink: as with any external broker (bootstrap, protocol, user and password set)
    stack.start("sink", SINK_READY, PHRASESTREAM_KAFKA_BOOTSTRAP=sasl.bootstrap,
                PHRASESTREAM_KAFKA_SECURITY_PROTOCOL="SASL_PLAINTEXT", PHRASESTREAM_KAFKA_SASL_USERNAME="phrasestream",
                PHRASESTREAM_KAFKA_SASL_PASSWORD=sasl.kafka_password, **extra_env)
    secure = _over_sasl(stack)
    secure.produce(*(json.dumps({"id": i, "text": t, "region": "global"}).encode() for i, t in PHRASES))
    predictions = secure.read(stack.settings.topic_out, len(PHRASES) * len(heads))
    assert len(predictions) == len(PHRASES) * len(heads), f"predictions: {predictions}\n{stack.tails()}"
    secure.wait_sink_caught_up()  # the sink stored and committed every prediction: the rows are final
    return heads, predictions, secure.rows()


@dataclasses.dataclass
class SaslRun:
    heads: list[str]
    predictions: list[dict]
    rows: list[dict]
    logs: list[Path]


@pytest.fixture(scope="module")
def sasl_run(module_stack, sasl) -> SaslRun:  # type: ignore[no-untyped-def]
    """A stream over SASL at DEBUG level (the most a log says), then the worker and sink stopped
    (their shutdown lines too). Two tests read this one run: what was served, and the logs."""
    heads, predictions, rows = _serve_over_sasl(module_stack, sasl, PHRASESTREAM_LOG_LEVEL="DEBUG")
    module_stack.stop("worker")
    module_stack.stop("sink")
    logs = sorted(module_stack.logs.glob("*.log"))
    home_logs = Path(sasl.home).expanduser() / "logs"
    logs += sorted(p.resolve() for p in home_logs.glob("*.log"))  # the broker's and PostgreSQL's
    return SaslRun(heads, predictions, rows, logs)


def test_a_worker_and_a_sink_serve_a_stream_over_sasl_scram(sasl_run, module_stack, sasl):
    heads, predictions, rows = sasl_run.heads, sasl_run.predictions, sasl_run.rows

    assert sorted((p["id"], p["model"]) for p in predictions) == sorted((i, m) for i, _ in PHRASES for m in heads)
    assert sorted((r["id"], r["model"], r["label"]) for r in rows) == \
        sorted((p["id"], p["model"], p["label"]) for p in predictions)
    # with auto-creation off, the app itself made its internal topics (over SASL)
    topics = AdminClient(client_config(sasl)).list_topics(timeout=10).topics
    app_id = module_stack.settings.app_id
    assert {f"{app_id}-phrases.cleaned", f"{app_id}-embedding-cache-changelog"} <= set(topics)


def test_a_wrong_password_is_refused_with_a_clear_error(stack, sasl):
    wrong = sasl.model_copy(update={"kafka_sasl_password": SecretStr(WRONG_PASSWORD)})
    with pytest.raises(KafkaAuthError, match="authentication failed"):
        check_access(wrong, timeout=30)

    sink = stack.start("sink", None, PHRASESTREAM_KAFKA_BOOTSTRAP=sasl.bootstrap,
                       PHRASESTREAM_KAFKA_SECURITY_PROTOCOL="SASL_PLAINTEXT",
                       PHRASESTREAM_KAFKA_SASL_PASSWORD=WRONG_PASSWORD)
    assert sink.wait(BOUND_S) == 2  # a bound, not a measurement: the check gives up after 15 s
    text = (stack.logs / "sink.log").read_text()
    assert "authentication failed" in text and "PHRASESTREAM_KAFKA_SASL_PASSWORD" in text
    assert WRONG_PASSWORD not in text


def test_the_local_broker_creates_no_topic_on_a_mistyped_name(base_settings):
    if not base_settings.local_kafka:
        pytest.skip("tests the local broker's configuration")
    admin = AdminClient(client_config(base_settings))
    broker = ConfigResource(ConfigResource.Type.BROKER, "1")
    assert admin.describe_configs([broker])[broker].result(30)["auto.create.topics.enable"].value == "false"

    typo = f"phrases.inn-{uuid.uuid4().hex[:8]}"
    errors: list[KafkaError] = []
    # librdkafka fails a message to a topic the cluster does not know once this time is over
    producer = Producer(client_config(base_settings, {"topic.metadata.propagation.max.ms": 1000}))
    producer.produce(typo, b"{}", on_delivery=lambda err, _msg: errors.append(err))
    assert producer.flush(30) == 0
    assert errors and errors[0] is not None
    assert errors[0].code() in (KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_TOPIC), errors[0]
    assert typo not in admin.list_topics(timeout=10).topics


def test_no_password_reaches_any_log(sasl_run, sasl):
    """Grep every log of the stream over SASL (DEBUG level, shutdown included) for both passwords."""
    assert sasl_run.predictions and len(sasl_run.rows) == len(sasl_run.predictions)
    secrets = {"kafka": sasl.kafka_password, "postgres": parse_dsn(sasl.dsn).get("password", "")}
    assert all(len(s) >= 8 for s in secrets.values()), "a short password could match by chance"
    logs = sasl_run.logs
    assert {"worker.log", "sink.log"} <= {p.name for p in logs}
    found = {(name, p.name) for p in logs for name, s in secrets.items() if s in p.read_text(errors="replace")}
    assert not found, f"passwords in logs: {sorted(found)}"
