"""Build every Kafka client's configuration from the settings, security included.

One place turns ``PHRASESTREAM_KAFKA_SECURITY_PROTOCOL``, ``..._SASL_MECHANISM``,
``..._SASL_USERNAME``, ``..._SASL_PASSWORD`` and ``..._SSL_CAFILE/CERTFILE/KEYFILE`` into:

- :func:`client_config`: the dict of a confluent-kafka ``Producer``, ``Consumer`` or
  ``AdminClient`` (every one phrasestream makes, the sink's included, starts from it);
- :func:`faust_credentials`: Faust's ``broker_credentials`` (its aiokafka clients).

Example::

    from confluent_kafka import Consumer
    consumer = Consumer(client_config(settings, {"group.id": "reader"}))

The config holds the password: never log it (``ops.logs`` redacts ``sasl.password`` anyway).
:func:`check_access` asks the broker for its metadata once, within a bound, and turns a
refused login into :class:`KafkaAuthError` with a message that says what to fix, where
librdkafka would otherwise retry it quietly for ever.
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Callable
from typing import Any

from schemas.settings import Settings

log = logging.getLogger("phrasestream.kafka")

SASL_PROTOCOLS = ("SASL_PLAINTEXT", "SASL_SSL")
SSL_PROTOCOLS = ("SSL", "SASL_SSL")


class KafkaAuthError(RuntimeError):
    """The broker refused our credentials (or TLS handshake): retrying will not help."""


def client_config(settings: Settings, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Return a confluent-kafka config: bootstrap servers and security, then ``extra``.

    PLAINTEXT (the default) adds nothing but ``bootstrap.servers``; SASL_* adds the mechanism,
    user and password (:attr:`Settings.kafka_password`); SSL and SASL_SSL add the CA, the
    certificate and the key files that are set.
    """
    protocol = settings.kafka_security_protocol
    config: dict[str, Any] = {"bootstrap.servers": settings.bootstrap}
    if protocol != "PLAINTEXT":
        config["security.protocol"] = protocol
    if protocol in SASL_PROTOCOLS:
        config["sasl.mechanism"] = settings.kafka_sasl_mechanism
        config["sasl.username"] = settings.kafka_sasl_username
        config["sasl.password"] = settings.kafka_password
    if protocol in SSL_PROTOCOLS:
        for key, value in (("ssl.ca.location", settings.kafka_ssl_cafile),
                           ("ssl.certificate.location", settings.kafka_ssl_certfile),
                           ("ssl.key.location", settings.kafka_ssl_keyfile)):
            if value:
                config[key] = value
    return {**config, **(extra or {})}


def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """Return the TLS context of Faust's clients for SSL and SASL_SSL, else None."""
    if settings.kafka_security_protocol not in SSL_PROTOCOLS:
        return None
    context = ssl.create_default_context(cafile=settings.kafka_ssl_cafile or None)
    if settings.kafka_ssl_certfile:
        context.load_cert_chain(settings.kafka_ssl_certfile, settings.kafka_ssl_keyfile or None)
    return context


def faust_credentials(settings: Settings) -> Any:
    """Return Faust's ``broker_credentials`` for the settings' protocol (None for PLAINTEXT)."""
    import faust

    protocol = settings.kafka_security_protocol
    if protocol in SASL_PROTOCOLS:
        return faust.SASLCredentials(username=settings.kafka_sasl_username, password=settings.kafka_password,
                                     mechanism=settings.kafka_sasl_mechanism, ssl_context=ssl_context(settings))
    if protocol == "SSL":
        return faust.SSLCredentials(ssl_context(settings))
    return None


def check_access(settings: Settings, timeout: float = 15.0) -> bool:
    """Fetch the cluster metadata once; say whether it came, raise :class:`KafkaAuthError` if refused.

    No answer within ``timeout`` (no broker yet) gives False; a refused login or TLS
    handshake is final and would otherwise only show as an endless retry.
    """
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import AdminClient

    refused: list[str] = []

    def on_error(err: KafkaError) -> None:
        if err.code() in (KafkaError._AUTHENTICATION, KafkaError._SSL):
            refused.append(err.str())

    quiet = logging.getLogger("phrasestream.kafka.check")
    quiet.setLevel(logging.CRITICAL)
    admin = AdminClient(client_config(settings, {"error_cb": on_error, "logger": quiet}))
    deadline = time.monotonic() + timeout
    while not refused and time.monotonic() < deadline:
        try:
            admin.list_topics(timeout=min(2.0, max(deadline - time.monotonic(), 0.1)))
            return True
        except KafkaException:
            admin.poll(0.2)  # serves error_cb
    if refused:
        who = (f"user {settings.kafka_sasl_username!r} ({settings.kafka_sasl_mechanism})"
               if settings.kafka_security_protocol in SASL_PROTOCOLS else "this client")
        raise KafkaAuthError(
            f"Kafka at {settings.bootstrap} refused {who}: authentication failed ({refused[0]}); check "
            "PHRASESTREAM_KAFKA_SASL_USERNAME/PHRASESTREAM_KAFKA_SASL_PASSWORD (or the SSL files)")
    return False


class BrokerUnreachable(RuntimeError):
    """The broker did not answer within ``PHRASESTREAM_BROKER_WAIT_SECONDS``."""


def wait_for_broker(settings: Settings, say: Callable[[str], None] = log.warning) -> None:
    """Wait for the broker before a worker or sink starts: retry with backoff, then give up.

    A broker that restarts during a deploy is back within seconds to a minute: waiting rides
    that out. One that stays away longer is an outage for the supervisor (systemd,
    Kubernetes, compose ``restart:``) to see, so we raise :class:`BrokerUnreachable` (exit 3)
    instead of hanging. A refused login raises :class:`KafkaAuthError` at once (exit 2).
    """
    from tenacity import Retrying, retry_if_result, stop_after_delay, wait_exponential

    budget = settings.broker_wait_seconds
    retrying = Retrying(stop=stop_after_delay(budget), wait=wait_exponential(multiplier=1, min=1, max=10),
                        retry=retry_if_result(lambda answered: not answered), retry_error_callback=lambda _s: False,
                        before_sleep=lambda state: say(
                            f"Kafka at {settings.bootstrap} does not answer; trying again "
                            f"(waited {state.seconds_since_start:.0f} of {budget:.0f} s)"))
    if not retrying(check_access, settings, timeout=max(1.0, min(5.0, budget / 4))):
        raise BrokerUnreachable(f"Kafka at {settings.bootstrap} did not answer within {budget:.0f} s "
                                "(PHRASESTREAM_BROKER_WAIT_SECONDS); is the broker up? `phrasestream status` tells")
