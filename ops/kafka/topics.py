"""The project's topics: their partitions and configs, creating them, and acknowledged produces."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from ops.kafka.clients import client_config
from ops.processes import wait_until
from schemas.settings import Settings

if TYPE_CHECKING:
    from confluent_kafka.admin import AdminClient

log = logging.getLogger("phrasestream.ops")

DAY_MS = 24 * 3600 * 1000


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
        # answers routed for review: read by the review page into PostgreSQL; two weeks of slack
        settings.topic_review: (1, {"cleanup.policy": "delete", "retention.ms": days(14)}),
        # shadow heads' answers: stored by the sink; as long as the predictions
        settings.topic_shadow: (settings.partitions_out, {"cleanup.policy": "delete", "retention.ms": days(7)}),
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
        _wait_led(admin, name, partitions)  # a broker just restarted elects the leaders of its topics again
        return False
    fut = admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=rf,
                                        config=dict(config or {}))], operation_timeout=30, request_timeout=30)
    try:
        fut[name].result(60)
    except KafkaException as exc:
        if exc.args and exc.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS:
            return False
        raise
    _wait_led(admin, name, partitions)
    log.info("topic %s: created with %d partitions", name, partitions)
    return True


def _wait_led(admin: AdminClient, name: str, partitions: int) -> None:
    """Wait until the metadata shows every partition of ``name`` with a leader.

    Bounded (30 s); a slow leader election then shows up at the first produce or offset query instead.
    """
    def led() -> bool:
        t = admin.list_topics(name, timeout=5).topics.get(name)
        return t is not None and t.error is None and len(t.partitions) >= partitions \
            and all(p.leader >= 0 for p in t.partitions.values())

    wait_until(led, 30, 0.2)


def _align_configs(admin: AdminClient, name: str, config: dict[str, str]) -> dict[str, str]:
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
