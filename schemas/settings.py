"""One settings object for every part of phrasestream, read from the environment.

Every variable has the prefix ``PHRASESTREAM_`` and a default that works on a laptop:
with nothing set, the project starts and uses its own Kafka broker and PostgreSQL under
``.local/``. Set ``PHRASESTREAM_KAFKA_BOOTSTRAP`` or ``PHRASESTREAM_PG_DSN`` to use servers of
your own instead; then nothing is started for that service.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Read the configuration from ``PHRASESTREAM_*`` environment variables."""

    model_config = SettingsConfigDict(env_prefix="PHRASESTREAM_", extra="ignore", frozen=True)

    home: Path = Field(default=Path(".local"), description="runtime state: broker, database, models, logs")

    # Kafka
    kafka_bootstrap: str = Field(default="", description="external broker(s); empty: start the local one")
    kafka_port: int = Field(default=19092, description="port of the local broker")
    kafka_controller_port: int = Field(default=19093, description="KRaft controller port of the local broker")
    kafka_version: str = Field(default="4.1.1", description="Apache Kafka release fetched from Maven Central")
    kafka_sasl_port: int = Field(default=19094, description="SASL_PLAINTEXT (SCRAM-SHA-512) listener of the local broker")
    kafka_security_protocol: str = Field(
        default="PLAINTEXT", pattern=r"^(PLAINTEXT|SASL_PLAINTEXT|SASL_SSL|SSL)$",
        description="security.protocol of every Kafka client; SASL_PLAINTEXT with the local broker: its SASL port "
        "and generated password")
    kafka_sasl_mechanism: str = Field(default="SCRAM-SHA-512", pattern=r"^(SCRAM-SHA-256|SCRAM-SHA-512|PLAIN)$",
                                      description="SASL mechanism, when the protocol is SASL_*")
    kafka_sasl_username: str = Field(default="phrasestream", description="SASL user")
    kafka_sasl_password: SecretStr = Field(
        default=SecretStr(""), description="SASL password (a secret: never logged); empty with the local broker: "
        "<home>/kafka/scram-password")
    kafka_ssl_cafile: str = Field(default="", description="CA bundle (PEM) that signs the broker's certificate")
    kafka_ssl_certfile: str = Field(default="", description="client certificate (PEM), for brokers that ask for one")
    kafka_ssl_keyfile: str = Field(default="", description="private key (PEM) of the client certificate")
    topic_in: str = Field(default="phrases.in", description="input topic")
    topic_out: str = Field(default="predictions.out", description="predictions topic")
    topic_dlq: str = Field(default="phrases.dlq", description="dead-letter topic")
    topic_labeled: str = Field(default="phrases.labeled", description="labelled examples topic")
    topic_registry: str = Field(default="models.registry", description="live head versions (compacted)")
    topic_alerts: str = Field(default="drift.alerts", description="drift alerts of `phrasestream drift-watch`")
    topic_rollups: str = Field(default="serving.rollups", description="per-hour serving rollups for drift reports")
    topic_review: str = Field(default="phrases.review", description="answers routed to a human (the review rule)")
    topic_shadow: str = Field(default="predictions.shadow", description="answers of shadow heads, never served")
    partitions_in: int = Field(default=4, ge=1, description="partitions of phrases.in and the internal topics")
    partitions_out: int = Field(default=4, ge=1, description="partitions of predictions.out")
    replication_factor: int = Field(default=1, ge=1, description="replication of the topics phrasestream creates")
    app_id: str = Field(default="phrasestream", description="Faust app id: consumer group and internal topic prefix")
    worker_index: int = Field(default=1, ge=1, description="which worker of this machine this is (1..N); "
                              "`phrasestream start --workers N` sets it")
    labeled_retention_ms: int = Field(default=-1, ge=-1,
                                      description="retention of phrases.labeled, ms; -1 keeps every example")

    # PostgreSQL
    pg_dsn: SecretStr = Field(default=SecretStr(""), description="external server DSN; empty: start the embedded one")
    pg_port: int = Field(default=15432, description="port of the embedded PostgreSQL")
    pg_schema: str = Field(default="public", description="schema that holds the inference table")
    pg_server_dir: str = Field(
        default="", description="folder for the embedded server's data, binaries and log; empty: "
        "<home>/pg, or /var/tmp/phrasestream-pg-<hash> when run as root")

    # Models
    models_dir: Path | None = Field(default=None, description="heads and embedder export; default <home>/models")
    embed_batch_max: int = Field(default=32, ge=1, description="under load a batch holds about 0.1 s of work, but "
                                 "never fewer phrases than this (a batch's cache misses are one embedder call)")
    embed_precision: str = Field(default="auto", pattern=r"^(auto|fp32|bf16|int8)$",
                                 description="what the embedder computes in: fp32, bf16 or int8 (dynamic-range int8 "
                                 "encoder); auto: the fastest of those worth trying on this CPU, timed once "
                                 "(models.embedder.cpu.choose_precision); a head serves only in its own")
    embed_warmup: bool = Field(default=True, description="compile the embedder's graphs at start (a few seconds of "
                               "CPU) so that the first phrases do not wait for it; false for short-lived workers")
    top_k: int = Field(default=3, ge=1, description="(label, probability) pairs per prediction")
    registry_retry_seconds: float = Field(default=30.0, gt=0,
                                          description="longest wait between fetches of a head the database could not give")
    answer_memo_entries: int = Field(default=100_000, ge=0,
                                     description="answers remembered per (head version, cleaned text); 0 disables it")
    cache_max_entries: int = Field(default=100_000, ge=0, description="embedding cache size; 0 disables it")
    rollup_interval_seconds: float = Field(default=10.0, gt=0,
                                           description="how often the worker publishes its serving rollups, seconds")

    # Worker group membership and start-up
    group_instance_id: str = Field(default="",
                                   description="static group member id of the worker; empty: <app_id>-<host>-<index>; "
                                               "`none`: dynamic membership")
    session_timeout_seconds: float = Field(default=10.0, ge=6.0, le=300.0,
                                           description="a worker silent this long loses its partitions to the others")
    stream_batch_max: int = Field(default=1000, ge=1, description="largest batch an agent takes: it takes what "
                                  "is there at once, so batches grow with the backlog up to this")
    commit_interval_ms: int = Field(default=20, ge=1, le=60_000,
                                    description="the worker commits the input offsets whose outputs the broker has "
                                                "acknowledged at most this often (and at stop), ms")
    fetch_wait_ms: int = Field(default=20, ge=1, le=1500,
                               description="the longest the worker's consumer waits at the broker for new messages "
                                           "(Faust's own is 1500): a message may wait this long per hop")
    max_in_flight: int = Field(default=20_000, ge=1, description="outputs an agent may have waiting for the "
                               "broker's acknowledgement before it waits too")
    broker_wait_seconds: float = Field(default=60.0, ge=0,
                                       description="a worker or sink that starts while the broker is unreachable "
                                                   "retries this long, then exits with code 3")

    # Input limits
    max_text_chars: int = Field(default=1000, ge=1, description="longer text goes to the DLQ")
    max_message_bytes: int = Field(default=64_000, ge=1, description="larger messages go to the DLQ")

    # Sink
    sink_group: str = Field(default="phrasestream-sink", description="consumer group of the PostgreSQL sink")
    sink_batch_max: int = Field(default=5000, ge=1, description="largest batch the sink writes at once")
    sink_retry_seconds: float = Field(default=60.0, gt=0, description="retry one batch this long before re-reading it")

    # Metrics and logs
    metrics_host: str = Field(default="127.0.0.1",
                              description="address the /metrics endpoints listen on; 0.0.0.0 for every interface")
    worker_metrics_port: int = Field(default=19400, ge=0, le=65535,
                                     description="port of the worker's /metrics; 0 disables it")
    sink_metrics_port: int = Field(default=19399, ge=0, le=65535,
                                   description="port of the sink's /metrics, below the workers' range; 0 disables it")
    review_host: str = Field(default="127.0.0.1", description="address the review page listens on")
    review_port: int = Field(default=8080, ge=0, le=65535, description="port of the review page (`phrasestream review`)")
    review_users: SecretStr = Field(default=SecretStr(""), description="reviewers of the review page, as "
                                    "`name:password,name:password`; empty: one generated in <home>/review-users")
    review_double_share: float = Field(default=0.1, ge=0, le=1, description="share of review items shown to "
                                       "two reviewers, for their agreement")
    log_level: str = Field(default="INFO", description="DEBUG, INFO, WARNING or ERROR")
    log_format: str = Field(default="text", pattern=r"^(text|json)$",
                            description="text (readable lines) or json (one JSON object a line)")

    @property
    def local_kafka(self) -> bool:
        """Say whether phrasestream starts its own broker."""
        return not self.kafka_bootstrap

    @property
    def bootstrap(self) -> str:
        """Return the bootstrap servers to use, local or external.

        With the local broker and a SASL protocol this is its SASL listener
        (``kafka_sasl_port``), otherwise its PLAINTEXT one (``kafka_port``).
        """
        if self.kafka_bootstrap:
            return self.kafka_bootstrap
        sasl = self.kafka_security_protocol.startswith("SASL_")
        return f"127.0.0.1:{self.kafka_sasl_port if sasl else self.kafka_port}"

    @property
    def kafka_password_file(self) -> Path:
        """Return the file that holds the local broker's SCRAM password (mode 0600)."""
        return Path(self.home).expanduser() / "kafka" / "scram-password"

    @property
    def kafka_password(self) -> str:
        """Return the SASL password (a secret: never log it).

        ``PHRASESTREAM_KAFKA_SASL_PASSWORD`` when set; with the local broker, else, the password
        ``phrasestream up`` generated into :attr:`kafka_password_file`.
        """
        password = self.kafka_sasl_password.get_secret_value()
        if password or not self.local_kafka:
            return password
        try:
            return self.kafka_password_file.read_text(encoding="utf-8").strip()
        except OSError:  # no broker set up yet, or not ours to read
            return ""

    @property
    def local_pg(self) -> bool:
        """Say whether phrasestream starts its own PostgreSQL."""
        return not self.pg_dsn.get_secret_value()

    @property
    def pg_password_file(self) -> Path:
        """Return the file that holds the embedded PostgreSQL's password (mode 0600)."""
        return Path(self.home).expanduser() / "pg" / "password"

    @property
    def dsn(self) -> str:
        """Return the DSN to use (a secret: never log it).

        The embedded server's DSN carries the password from :attr:`pg_password_file` (as the
        URI parameter ``password``, URL-quoted) when that file exists and can be read.
        """
        external = self.pg_dsn.get_secret_value()
        if external:
            return external
        dsn = f"postgresql://phrasestream@127.0.0.1:{self.pg_port}/phrasestream"
        try:
            password = self.pg_password_file.read_text(encoding="utf-8").strip()
        except OSError:  # no file yet (new data dir), or not ours to read
            password = ""
        if password:
            from urllib.parse import quote

            dsn += "?password=" + quote(password, safe="")
        return dsn

    @property
    def models_root(self) -> Path:
        """Return the folder that holds heads and the embedder export."""
        return self.models_dir or self.home / "models"
