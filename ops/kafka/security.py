"""The local broker's SASL/SCRAM listener: its properties, its user and its password.

``phrasestream up`` gives the local broker two client listeners on 127.0.0.1:

- PLAINTEXT on ``PHRASESTREAM_KAFKA_PORT`` (19092): the default for local use;
- SASL_PLAINTEXT with SCRAM-SHA-512 on ``PHRASESTREAM_KAFKA_SASL_PORT`` (19094): the same
  broker behind a login, so that the authenticated path every client can take
  (``PHRASESTREAM_KAFKA_SECURITY_PROTOCOL=SASL_PLAINTEXT``) is tested without Docker.

The SCRAM user (``PHRASESTREAM_KAFKA_SASL_USERNAME``, ``phrasestream``) gets a generated
password, kept in ``<home>/kafka/scram-password`` (mode 0600) and read back by
``Settings.kafka_password``. The user is made through the admin API on the PLAINTEXT
listener after the broker answers, not with ``kafka-storage format --add-scram``: that way a
data directory formatted before this listener existed gets its user at the next ``up``, and
the password never appears on a command line.
"""

from __future__ import annotations

import logging
import os
import secrets
import tempfile
from pathlib import Path
from typing import Any

from schemas.settings import Settings

log = logging.getLogger("phrasestream.ops")

SCRAM_MECHANISMS = ("SCRAM-SHA-512", "SCRAM-SHA-256")
SCRAM_ITERATIONS = 8192
_JAAS = "org.apache.kafka.common.security.scram.ScramLoginModule required;"


def listener_props(settings: Settings, host: str = "127.0.0.1") -> dict[str, str]:
    """Return the broker properties of the PLAINTEXT, SASL_PLAINTEXT and controller listeners."""
    port, sport, cport = settings.kafka_port, settings.kafka_sasl_port, settings.kafka_controller_port
    props = {
        "listeners": f"PLAINTEXT://{host}:{port},SASL_PLAINTEXT://{host}:{sport},CONTROLLER://{host}:{cport}",
        "advertised.listeners": f"PLAINTEXT://{host}:{port},SASL_PLAINTEXT://{host}:{sport}",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT",
        "sasl.enabled.mechanisms": ",".join(SCRAM_MECHANISMS),
    }
    for mechanism in SCRAM_MECHANISMS:
        props[f"listener.name.sasl_plaintext.{mechanism.lower()}.sasl.jaas.config"] = _JAAS
    return props


def _write_private(path: Path, text: str) -> None:
    """Replace ``path`` atomically by ``text``, mode 0600 whatever the umask."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            os.fchmod(fh.fileno(), 0o600)
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def scram_password(settings: Settings) -> tuple[str, bool]:
    """Return the local SCRAM password and whether it was generated now (into a 0600 file)."""
    path = settings.kafka_password_file
    try:
        password = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        password = ""
    if password:
        if path.stat().st_mode & 0o077 and path.stat().st_uid == os.geteuid():
            path.chmod(0o600)
        return password, False
    password = secrets.token_urlsafe(24)
    _write_private(path, password + "\n")
    log.info("generated the Kafka SCRAM password into %s", path)
    return password, True


def _has_credentials(admin: Any, user: str) -> bool:
    """Say whether ``user`` has credentials for every mechanism of the listener."""
    from confluent_kafka import KafkaException

    try:
        info = admin.describe_user_scram_credentials([user])[user].result(30)
    except KafkaException:  # RESOURCE_NOT_FOUND: no such user yet
        return False
    have = {c.mechanism.name.replace("_", "-") for c in info.scram_credential_infos}
    return set(SCRAM_MECHANISMS) <= have


def ensure_scram_user(settings: Settings) -> bool:
    """Make the SCRAM user of the local broker if it is missing; return True when made now.

    Talks to the PLAINTEXT listener (the only one that needs no password). A password file
    generated now (a new home, or a deleted file) always replaces the user's credentials.
    """
    from confluent_kafka.admin import AdminClient, ScramCredentialInfo, ScramMechanism, UserScramCredentialUpsertion

    password, generated = scram_password(settings)
    user = settings.kafka_sasl_username
    quiet = logging.getLogger("phrasestream.ops.librdkafka")
    quiet.setLevel(logging.CRITICAL)  # librdkafka's notices of a missing user are not news here
    config: dict[str, Any] = {"bootstrap.servers": f"127.0.0.1:{settings.kafka_port}", "logger": quiet}
    admin = AdminClient(config)
    if not generated and _has_credentials(admin, user):
        return False
    for mechanism in SCRAM_MECHANISMS:  # one request each: a request names a user once
        info = ScramCredentialInfo(ScramMechanism[mechanism.replace("-", "_")], SCRAM_ITERATIONS)
        upsert = UserScramCredentialUpsertion(user, info, password.encode())
        admin.alter_user_scram_credentials([upsert])[user].result(30)
    log.info("Kafka SCRAM user %s: credentials set (%s)", user, ", ".join(SCRAM_MECHANISMS))
    return True
