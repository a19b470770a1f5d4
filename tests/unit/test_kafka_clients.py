"""Kafka security settings reach every client's config; topics get the configured replication."""

from __future__ import annotations

from types import SimpleNamespace

import faust
import pytest

from ops.kafka import local as kafka_local
from ops.kafka import security as kafka_security
from ops.kafka import topics
from ops.kafka.clients import client_config, faust_credentials
from ops.logs import redact_secrets
from ops.paths import Paths
from schemas.settings import Settings


def test_plaintext_is_the_default_and_adds_nothing():
    settings = Settings(_env_file=None)
    assert client_config(settings) == {"bootstrap.servers": f"127.0.0.1:{settings.kafka_port}"}
    assert faust_credentials(settings) is None


def test_sasl_settings_reach_the_confluent_config_and_extras_come_last():
    settings = Settings(kafka_bootstrap="b1:9094,b2:9094", kafka_security_protocol="SASL_SSL",
                        kafka_sasl_mechanism="SCRAM-SHA-256", kafka_sasl_username="svc",
                        kafka_sasl_password="s3cret", kafka_ssl_cafile="/etc/ca.pem")
    config = client_config(settings, {"group.id": "g"})
    assert config == {"bootstrap.servers": "b1:9094,b2:9094", "security.protocol": "SASL_SSL",
                      "sasl.mechanism": "SCRAM-SHA-256", "sasl.username": "svc", "sasl.password": "s3cret",
                      "ssl.ca.location": "/etc/ca.pem", "group.id": "g"}


def test_ssl_settings_reach_the_confluent_config_without_sasl_keys():
    settings = Settings(kafka_bootstrap="b:9093", kafka_security_protocol="SSL", kafka_ssl_cafile="/ca",
                        kafka_ssl_certfile="/cert", kafka_ssl_keyfile="/key")
    assert client_config(settings) == {"bootstrap.servers": "b:9093", "security.protocol": "SSL",
                                       "ssl.ca.location": "/ca", "ssl.certificate.location": "/cert",
                                       "ssl.key.location": "/key"}


def test_local_sasl_uses_the_sasl_port_and_the_generated_password(tmp_path):
    settings = Settings(home=tmp_path, kafka_security_protocol="SASL_PLAINTEXT", kafka_sasl_port=29999)
    password, generated = kafka_security.scram_password(settings)
    assert generated and oct(settings.kafka_password_file.stat().st_mode & 0o777) == "0o600"
    assert kafka_security.scram_password(settings) == (password, False)
    config = client_config(settings)
    assert config["bootstrap.servers"] == "127.0.0.1:29999"
    assert (config["sasl.username"], config["sasl.password"]) == ("phrasestream", password)


def test_faust_gets_scram_credentials():
    settings = Settings(kafka_bootstrap="b:9094", kafka_security_protocol="SASL_PLAINTEXT",
                        kafka_sasl_password="pw")
    creds = faust_credentials(settings)
    assert isinstance(creds, faust.SASLCredentials)
    assert (creds.protocol.value, creds.mechanism.value, creds.username, creds.password) == \
        ("SASL_PLAINTEXT", "SCRAM-SHA-512", "phrasestream", "pw")
    assert "pw" not in repr(creds)


def test_the_kafka_password_is_a_secret_in_repr_and_redacted_in_logs():
    settings = Settings(kafka_sasl_password="hunter2")
    assert "hunter2" not in repr(settings)
    event = redact_secrets(None, "info", {"event": "config", "sasl.password": "hunter2"})
    assert "hunter2" not in str(event)


def test_unknown_protocol_or_mechanism_is_refused():
    with pytest.raises(ValueError):
        Settings(kafka_security_protocol="SASL")
    with pytest.raises(ValueError):
        Settings(kafka_sasl_mechanism="GSSAPI")


def test_local_broker_has_a_scram_listener_and_no_topic_auto_creation(tmp_path):
    settings = Settings(home=tmp_path, kafka_port=1, kafka_sasl_port=2, kafka_controller_port=3)
    paths = Paths.of(settings)
    paths.make_dirs()
    kafka_local._write_kafka_config(settings, paths)
    props = dict(line.split("=", 1) for line in paths.kafka_config.read_text().splitlines() if "=" in line)
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:1,SASL_PLAINTEXT://127.0.0.1:2,CONTROLLER://127.0.0.1:3"
    assert "SASL_PLAINTEXT:SASL_PLAINTEXT" in props["listener.security.protocol.map"]
    assert "SCRAM-SHA-512" in props["sasl.enabled.mechanisms"].split(",")
    assert props["auto.create.topics.enable"] == "false"


class FakeAdmin:
    """Records the topics asked for; knows no topic (create_topic's admin, without a broker)."""

    def __init__(self) -> None:
        self.created: list = []

    def list_topics(self, name: str | None = None, timeout: float | None = None) -> SimpleNamespace:
        return SimpleNamespace(topics={})

    def create_topics(self, topics: list, **_: object) -> dict:
        self.created += topics

        class Done:
            def result(self, _timeout: float) -> None:
                return None
        return {t.topic: Done() for t in topics}


@pytest.mark.parametrize("factor", [1, 3])
def test_every_project_topic_gets_the_configured_replication_factor(monkeypatch, factor):
    admin = FakeAdmin()
    monkeypatch.setattr(topics, "_admin", lambda _settings: admin)
    monkeypatch.setattr(topics, "wait_until", lambda *_a, **_k: True)  # no leader to wait for
    settings = Settings(replication_factor=factor, kafka_bootstrap="b:9092")
    topics.create_topics(settings)
    assert {t.topic for t in admin.created} == set(topics.topic_specs(settings))
    assert {t.replication_factor for t in admin.created} == {factor}
